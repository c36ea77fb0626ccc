"""A trained run, ready to sample: teacher, student and parameters, anywhere.

`build` makes, from a resolved config and a mesh, the teacher (its frozen
parameters placed on the mesh), the student and its abstract parameter
tree with shardings; there is no optimizer and no train step here. The
BOOT training assembly (`boot_jax.loop`), `sample`, `evaluate` and `export`
all start from it.

`load` opens a work directory on the devices of this process, whatever
mesh trained it: by default every local device holds a copy of the
parameters and splits the batch (`data=-1`); `mesh_from_spec('data=1,
fsdp=4')` chooses another layout. Only the parameters (the EMA ones when
kept) and the step are read from the latest checkpoint, straight into
their new shardings; the optimizer state is never read.

A teacher work directory (written by `boot_jax.train_teacher`) loads too:
it has a teacher and no student.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from boot_jax import models, teachers
from boot_jax.config import defaults
from boot_jax.distill import boot, conditions
from boot_jax.distill import student as student_lib
from boot_jax.models import attention as attention_lib
from boot_jax.runtime import checkpoint, paths, sharding
from boot_jax.runtime import workdir as workdir_lib
from boot_jax.teachers import network

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


class InferenceError(ValueError):
  """A work directory or an inference option that cannot be used."""


def dtype_of(name: str):
  """A computation dtype by name ('float32' -> None: the default)."""
  if name not in DTYPES:
    raise InferenceError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


@dataclasses.dataclass
class Model:
  """A teacher and (for BOOT runs) a student, placed on a mesh.

  Attributes:
    config: the resolved config (for a teacher directory: a BOOT config
      whose `teacher` section reads it, with no student).
    teacher: the frozen teacher, its parameters on `mesh`.
    student: the student, or None (a teacher work directory).
    grids: the BOOT time grids, one per curriculum stage, the finest last
      (empty without a student).
    mesh: where parameters and batches live.
    abstract_params: the student's parameters as ShapeDtypeStructs with
      shardings on `mesh` (None without a student).
    params_fn: `teacher_params -> initial student parameters`.
    boxed_params: the student's abstract parameters with their logical
      axis names (training derives the optimizer's shardings from them).
  """

  config: Any
  teacher: teachers.Teacher
  student: student_lib.Student | None
  grids: list[boot.Grid]
  mesh: Any
  abstract_params: Any = None
  params_fn: Callable | None = None
  boxed_params: Any = None

  @property
  def grid(self) -> boot.Grid | None:
    """The training grid (the finest; DDIM-N references use it)."""
    return self.grids[-1] if self.grids else None

  @property
  def guided(self) -> bool:
    return self.student is not None and self.student.guided

  @property
  def trained_guidance(self):
    """The fixed w the student was distilled at (None: unguided/guided)."""
    if self.student is None or self.guided:
      return None
    return self.config.boot.get("guidance")

  @property
  def guidance_range(self):
    if not self.guided:
      return None
    lo, hi = (float(w) for w in self.config.boot.guidance_range)
    return lo, hi

  def default_guidance(self):
    """The w used when none is given: the trained one, or the middle of a
    guidance-conditioned student's range."""
    if self.guided:
      lo, hi = self.guidance_range
      return (lo + hi) / 2
    if self.student is None:
      return None
    return self.config.boot.get("guidance")


def curriculum_grids(schedule, config) -> list[boot.Grid]:
  """Grids of N / 2^(k-1), ..., N / 2, N steps (at least one step each)."""
  stages = config.curriculum_stages
  sizes = [max(config.num_steps >> (stages - 1 - k), 1) for k in range(stages)]
  return [boot.make_grid(schedule, n, config.spacing) for n in sizes]


def teacher_placement(config, mesh, rules):
  """Where the frozen teacher goes: replicated, or over fsdp when large."""

  def place(abstract, specs):
    mode = sharding.teacher_placement(config, sharding.tree_bytes(abstract))
    if mode == "replicate":
      return jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    return sharding.tree_shardings(abstract, specs, mesh, rules)

  return place


class ResolvedSettings(defaults.Settings):
  """`Settings` whose teacher section has its derived fields filled."""


def settings(config) -> ResolvedSettings:
  """The run's read-only settings with the teacher's derived fields filled.

  Validates a raw config once (`defaults.freeze`) and resolves its teacher
  section once (a mixture's arrays, a network teacher's fields read from
  its work directory); `ResolvedSettings` come back as they are.
  """
  if isinstance(config, ResolvedSettings):
    return config
  config = defaults.freeze(config)
  teacher = teachers.resolved(config.teacher)
  return ResolvedSettings(defaults.derive(config, teacher=teacher))


def build(
  config,
  mesh,
  *,
  dtype=None,
  teacher_dtype="same",
  teacher: teachers.Teacher | None = None,
  remat: bool | str = False,
  with_student: bool = True,
) -> Model:
  """Builds the teacher and the student of a resolved config on `mesh`.

  Args:
    config: a BOOT config (`settings(config)` is what the model keeps).
    mesh: the device mesh.
    dtype: the student's computation dtype (None: float32).
    teacher_dtype: the teacher's computation dtype ('same': `dtype`).
    teacher: an already built teacher (its parameters are re-placed).
    remat: the student's rematerialisation policy (training only; see
      `config.defaults.remat`).
    with_student: False for a teacher work directory.
  """
  config = settings(config)
  rules = sharding.rules_from_config(config)
  place = teacher_placement(config, mesh, rules)
  if teacher_dtype == "same":
    teacher_dtype = dtype
  attention = defaults.attention(config)
  attention_lib.check(attention, mesh.devices.flat[0].platform)
  if teacher is None:
    teacher = teachers.build_teacher(
      config.teacher, placement=place, dtype=teacher_dtype, attention=attention
    )
  else:
    specs = jax.tree.map(lambda _: P(), teacher.params)
    teacher = dataclasses.replace(
      teacher,
      params=jax.device_put(teacher.params, place(teacher.params, specs)),
    )
  if not with_student:
    return Model(config, teacher, None, [], mesh)
  key = jax.random.key(config.train.seed)
  k_init, _ = jax.random.split(key)
  student, params_fn = student_lib.build_student(
    teacher,
    config.student,
    k_init,
    dtype=dtype,
    remat=remat,
    guided=config.boot.get("guidance_range") is not None,
    attention=attention,
  )
  boxed = models.boxed_abstract_params(
    student.module, student.sample_shape, teacher.null_condition(1)
  )
  abstract = jax.eval_shape(params_fn, teacher.params)
  section = config.get("sharding") or {}
  shardings = sharding.tree_shardings(
    abstract,
    sharding.logical_specs(boxed),
    mesh,
    rules,
    fsdp_fallback=bool(section.get("fsdp_fallback", True)),
  )
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    abstract,
    shardings,
  )
  return Model(
    config=config,
    teacher=teacher,
    student=student,
    grids=curriculum_grids(teacher.schedule, config.boot),
    mesh=mesh,
    abstract_params=abstract,
    params_fn=params_fn,
    boxed_params=boxed,
  )


def mesh_from_spec(spec: str | None = None, devices=None):
  """A mesh from 'data=D,fsdp=F,tensor=T' (default: `data=-1`).

  Axes left out have size 1; one size may be -1 (the remaining devices).
  Uses this process's devices.
  """
  sizes = {"data": 1, "fsdp": 1, "tensor": 1}
  if not spec:
    sizes["data"] = -1
  else:
    for item in spec.split(","):
      name, sep, value = item.partition("=")
      name = name.strip()
      if not sep or name not in sizes:
        raise InferenceError(
          f"--mesh {spec!r}: expected axis=size pairs over "
          f"{', '.join(sizes)}, e.g. data=2,fsdp=4"
        )
      try:
        sizes[name] = int(value)
      except ValueError:
        raise InferenceError(
          f"--mesh {spec!r}: the size of {name} is not an integer"
        ) from None
  devices = jax.local_devices() if devices is None else devices
  try:
    return sharding.make_mesh(ml_collections.ConfigDict(sizes), devices)
  except ValueError as e:
    raise InferenceError(f"--mesh {spec or 'data=-1'}: {e}") from None


def check_batch(mesh, batch_size: int) -> None:
  """A batch size that splits evenly over the mesh's batch axes."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size < 1:
    raise InferenceError(f"--batch_size must be >= 1, got {batch_size}")
  if batch_size % shards:
    raise InferenceError(
      f"--batch_size {batch_size} is not divisible by the {shards} devices "
      f"the batch is split over (data={mesh.shape['data']} x "
      f"fsdp={mesh.shape['fsdp']}); pick a multiple of {shards} or --mesh"
    )


# What a work directory's config.json must hold, by kind.
_BOOT_SECTIONS = ("teacher", "student", "boot", "train")
_TEACHER_SECTIONS = ("model", "diffusion", "data", "train")


def workdir_kind(workdir: str) -> str:
  """'boot' or 'teacher', from config.json; a one-line error otherwise."""
  config = workdir_lib.load_config(workdir)
  keys = set(config.keys())
  if all(k in keys for k in _BOOT_SECTIONS):
    return "boot"
  if all(k in keys for k in _TEACHER_SECTIONS):
    return "teacher"
  raise InferenceError(
    f"{workdir}/config.json is neither a BOOT run nor a teacher run "
    "(written by another program or an older layout of boot_jax)"
  )


def _latest_step(ckpt_dir: str, workdir: str) -> int:
  if not paths.isdir(ckpt_dir):
    raise InferenceError(f"{workdir} has no checkpoints/: nothing trained")
  steps = checkpoint.finished_steps(ckpt_dir)
  if not steps:
    raise InferenceError(f"{workdir} has no checkpoint yet: nothing trained")
  return max(steps)


def load(
  workdir: str, mesh=None, dtype: str = "float32", attention: str | None = None
):
  """Opens a work directory for inference on this process's devices.

  Args:
    workdir: a BOOT or teacher work directory.
    mesh: the mesh to place parameters on (default `mesh_from_spec()`).
    dtype: the networks' computation dtype ('float32' or 'bfloat16');
      float32 by default, whatever the run trained with, so that the
      teacher's DDIM is a reference.
    attention: overrides the run's `model.attention` (None: keep it).

  Returns:
    `(model, params, step)`: params are the student's (EMA when kept),
    None for a teacher directory; step is the checkpoint's.
  """
  compute = dtype_of(dtype)
  mesh = mesh_from_spec() if mesh is None else mesh
  kind = workdir_kind(workdir)
  ckpt_dir = paths.join(workdir, "checkpoints")
  if kind == "teacher":
    step = _latest_step(ckpt_dir, workdir)
    config = defaults.base_config()
    config.teacher = network.teacher_section(workdir)
    # A teacher's evaluation: its DDIM at several step counts.
    config.eval.num_samples = 2000
    config.eval.batch_size = 500
    config.eval.ddim_steps = (1, 2, 4, 10, 25, 50)
    config.eval.agreement_steps = ()
    config.eval.hybrid_steps = ()
    if attention is not None:
      config.model.attention = attention
    model = build(config, mesh, dtype=compute, with_student=False)
    return model, None, step
  config = workdir_lib.load_config(workdir)
  workdir_lib.resolve_teacher_path(config, workdir)
  if attention is not None:
    config.model = ml_collections.ConfigDict(dict(attention=attention))
  _latest_step(ckpt_dir, workdir)
  model = build(config, mesh, dtype=compute)
  params, step = checkpoint.read_params(ckpt_dir, model.abstract_params)
  return model, params, step


def noise(shape, num: int, seed: int, start: int = 0) -> np.ndarray:
  """The eps of examples start..start+num-1 for `seed` (float32 numpy).

  Example i's eps depends only on the seed and i, so any slice of a large
  request equals the same rows of a small one.
  """
  idx = jnp.arange(start, start + num)
  return np.asarray(
    conditions.draw_noise(jax.random.key(seed), 0, idx, tuple(shape))
  )
