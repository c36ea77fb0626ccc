"""The BOOT training assembly: teacher and student (from `inference`),
optimizer, the jitted train step and the data-free input draw.

`setup` builds everything a BOOT run needs from a resolved config; `run`
is the smallest loop (no work directory) for tests and benchmarks. The
generic driver (checkpoints, logging, signals, NaN policy) is
`boot_jax.driver`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from boot_jax import models, teachers
from boot_jax.config import defaults
from boot_jax.data import prompts
from boot_jax.distill import boot, conditions, refine
from boot_jax.distill import state as state_lib
from boot_jax.distill import step as step_lib
from boot_jax.distill import student as student_lib
from boot_jax.runtime import checkpoint, paths, sharding
from boot_jax.sampling import inference
from boot_jax.training import loop, optim

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The networks' computation dtype from `train.compute_dtype`."""
  name = config.train.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(
      f"train.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got "
      f"{name!r}"
    )
  return COMPUTE_DTYPES[name]


@dataclasses.dataclass
class Setup:
  """What a BOOT run is made of, built once from the resolved config.

  The state is only ever built through `init_state` (one jit whose
  out_shardings spread it over the mesh) or restored onto
  `abstract_state()`; nothing full size is materialised on one device.
  """

  config: Any
  teacher: teachers.Teacher
  student: student_lib.Student
  grids: list[boot.Grid]  # one per curriculum stage, the finest last
  optimizer: optax.GradientTransformation
  train_step: Callable  # jitted (state, teacher_params, batch)
  draw: Callable  # (step, stage) -> global batch; stage is static
  create: Callable  # teacher_params -> state (un-jitted)
  state_shardings: Any
  num_params: int
  mesh: Any = None
  traces: list = dataclasses.field(default_factory=list)
  model: inference.Model | None = None
  refine_step: Callable | None = None  # jitted, like train_step
  source_step: int | None = None  # refine.init_from's checkpoint step

  @property
  def grid(self) -> boot.Grid:
    """The training grid (the finest; DDIM-N references use it)."""
    return self.grids[-1]

  def stage(self, step: int) -> int:
    """The curriculum stage of a step (0 without a curriculum)."""
    n = len(self.grids)
    return min(int(step) * n // max(self.config.train.steps, 1), n - 1)

  def init_state(self) -> state_lib.TrainState:
    """The fresh state; with `refine.init_from`, its student (and EMA)
    from that BOOT run's latest checkpoint."""
    source = refine.init_from(self.config)
    if source is None:
      return jax.jit(self.create, out_shardings=self.state_shardings)(
        self.teacher.params
      )
    params, step = checkpoint.read_params(
      paths.join(source, "checkpoints"), self.model.abstract_params
    )
    self.source_step = int(step)
    return jax.jit(self.create, out_shardings=self.state_shardings)(
      self.teacher.params, params
    )

  def abstract_state(self):
    """The state's shapes, dtypes and shardings, without computing it."""
    abstract = jax.eval_shape(self.create, self.teacher.params)
    return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      self.state_shardings,
    )

  def step_fn(self, state, step: int):
    """BOOT's step, or the refinement's after `train.steps`."""
    batch = self.draw(step, self.stage(step))
    fn = self.train_step
    if self.refine_step is not None and step >= self.config.train.steps:
      fn = self.refine_step
    return fn(state, self.teacher.params, batch)


def setup(config, teacher: teachers.Teacher | None = None) -> Setup:
  """Builds teacher, student, grids, optimizer and the jitted functions.

  Phases: mesh -> teacher (restored straight into its shardings) ->
  student and the state's shardings (abstract, from the parameters'
  logical axis names and `config.sharding.rules`) -> the jitted step and
  the process-local input draw.
  """
  config = inference.settings(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.batch_size_per_shard(mesh, config.train.batch_size)
  rules = sharding.rules_from_config(config)
  model = inference.build(
    config,
    mesh,
    dtype=compute_dtype(config),
    teacher=teacher,
    remat=defaults.remat(config),
  )
  teacher, student, params_fn = model.teacher, model.student, model.params_fn
  k_data = jax.random.split(jax.random.key(config.train.seed))[1]
  optimizer = optim.make_optimizer(config.optim, config.train.steps)
  ema = config.optim.ema_decay is not None

  rcfg = fake = fake_params_fn = fake_boxed = None
  refine.init_from(config)  # refused without boot.refine
  if refine.enabled(config):
    why = refine.refused(config, model.guided)
    if why:
      raise ValueError(why)
    rcfg = refine.settings(config)
    source = refine.init_from(config)
    if source and not paths.isdir(paths.join(source, "checkpoints")):
      raise ValueError(
        f"refine.init_from {source} holds no checkpoints/: not a BOOT run"
      )
    fake, fake_params_fn = refine.build_fake(
      teacher,
      config.student,
      jax.random.fold_in(jax.random.key(config.train.seed), 7),
      dtype=compute_dtype(config),
      remat=defaults.remat(config),
      attention=defaults.attention(config),
    )
    fake_boxed = jax.eval_shape(fake_params_fn, teacher.params)
    if fake.module is not None:
      fake_boxed = models.boxed_abstract_params(
        fake.module, teacher.sample_shape, teacher.null_condition(1)
      )

  def create_from(params, fake_params):
    r = None if rcfg is None else refine.init_refine(params, fake_params, rcfg)
    return state_lib.create(params, optimizer, ema, r)

  def create(teacher_params, params=None):
    fake_params = None if rcfg is None else fake_params_fn(teacher_params)
    if params is None:
      params = params_fn(teacher_params)
    return create_from(params, fake_params)

  # Logical names ride along in the parameters' boxes through the
  # optimizer's init, so moments and EMA get their parameter's spec.
  boxed = model.boxed_params
  specs = sharding.logical_specs(jax.eval_shape(create_from, boxed, fake_boxed))
  abstract = jax.eval_shape(create, teacher.params)
  section = config.get("sharding") or {}
  state_shardings = sharding.tree_shardings(
    abstract,
    specs,
    mesh,
    rules,
    fsdp_fallback=bool(section.get("fsdp_fallback", True)),
  )
  grids = model.grids
  step_fn = step_lib.make_train_step(
    student,
    teacher,
    optimizer,
    config.boot,
    config.optim.ema_decay,
    config.train.nan_policy,
  )
  traces = []

  def counted_step(*args):
    traces.append("train_step")  # runs once per trace, never per step
    return step_fn(*args)

  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  train_step = step_lib.jit_train_step(
    counted_step,
    in_shardings=(
      state_shardings,
      jax.tree.map(lambda x: x.sharding, teacher.params),
      batch_sharding,
    ),
    out_shardings=(state_shardings, replicated),
  )
  refine_step = None
  if rcfg is not None:
    refine_step = step_lib.jit_train_step(
      refine.make_refine_step(
        student,
        fake,
        teacher,
        rcfg,
        refine.guidance(config),
        config.optim.ema_decay,
        config.train.nan_policy,
        config.train.steps,
        step_lib.make_loss_fn(student, teacher, config.boot),
      ),
      in_shardings=(
        state_shardings,
        jax.tree.map(lambda x: x.sharding, teacher.params),
        batch_sharding,
      ),
      out_shardings=(state_shardings, replicated),
    )
  batch_size = config.train.batch_size
  local_np = sharding.local_indices(batch_sharding, batch_size)
  indices = jnp.asarray(local_np)
  label_logits = config.teacher.get("label_logits")
  label_logits = None if label_logits is None else jnp.asarray(label_logits)
  guidance_range = config.boot.get("guidance_range")
  if guidance_range is not None:
    guidance_range = tuple(float(w) for w in guidance_range)

  time_sampling = config.boot.get("time_sampling", "uniform")

  @functools.partial(jax.jit, static_argnums=1)
  def draw_local(step, stage):
    return conditions.draw_batch(
      k_data,
      step,
      indices,
      teacher.sample_shape,
      teacher.condition,
      grids[stage],
      label_logits,
      guidance_range,
      time_sampling,
    )

  prompt_set = encode_batch = text_params = None
  if teacher.condition.kind == "text":
    prompt_set = teacher.prompts()
    if prompt_set is None:
      raise ValueError(
        "a text-to-image teacher trains on prompts: set teacher.prompts to "
        "a prompt file (.txt, .jsonl, .csv or .parquet)"
      )
    # The prompts are part of what the run is: a work directory refuses
    # another prompt file's contents as it refuses another config.
    section = defaults.thaw(config.teacher)
    section.prompts_sha256 = prompt_set.source_sha256
    config = defaults.derive(config, teacher=section)
    if prompt_set.encoding == "online":
      # Each batch's token ids are encoded on the devices by the frozen
      # text encoder, placed like the teacher.
      place = inference.teacher_placement(config, mesh, rules)
      text_params = teacher.text_params
      text_params = jax.device_put(
        text_params,
        place(text_params, jax.tree.map(lambda _: P(), text_params)),
      )
      encode_batch = jax.jit(
        teacher.encode_tokens,
        in_shardings=(
          jax.tree.map(lambda x: x.sharding, text_params),
          batch_sharding,
        ),
        out_shardings=batch_sharding,
      )

  def draw(step, stage):
    # Each process draws only its rows (keys fold in the global example
    # index), so the global batch does not depend on the process count.
    local = draw_local(step, stage)
    if prompt_set is None:
      return sharding.assemble_batch(batch_sharding, local, batch_size)
    rows = prompts.prompt_indices(
      config.train.seed, int(step) * batch_size + local_np, len(prompt_set)
    )
    if encode_batch is None:  # the embedding cache
      local = dict(local, cond=prompt_set.rows(rows))
      return sharding.assemble_batch(batch_sharding, local, batch_size)
    ids = teacher.tokenize(prompt_set.texts(rows))
    batch = sharding.assemble_batch(
      batch_sharding, dict(local, cond=ids), batch_size
    )
    return dict(batch, cond=encode_batch(text_params, batch["cond"]))

  return Setup(
    config=config,
    teacher=teacher,
    student=student,
    grids=grids,
    optimizer=optimizer,
    train_step=train_step,
    draw=draw,
    create=create,
    state_shardings=state_shardings,
    num_params=student_lib.num_params(abstract.params),
    mesh=mesh,
    traces=traces,
    model=model,
    refine_step=refine_step,
  )


def run(
  s: Setup, state=None, until: int | None = None, on_log=None, probe=None
):
  """The smallest BOOT loop (no work directory): for tests and benchmarks.

  `probe`: a data-free signal logged with each row (`Driver.probe`).

  Returns:
    `(state, history)`.
  """
  if state is None:
    state = s.init_state()
  total = refine.total_steps(s.config) if until is None else until
  d = loop.Driver(
    total_steps=total,
    step_fn=s.step_fn,
    log_every=s.config.train.log_every,
    log=on_log,
    sync=sharding.needs_step_sync(s.mesh),
    stop_on_nonfinite=s.config.train.nan_policy == "stop",
    probe=probe,
  )
  return loop.drive(state, d)
