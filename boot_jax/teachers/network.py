"""Teachers that are one of our own networks (UNet for pixels, MLP).

A trained teacher lives in a teacher work directory written by
`python -m boot_jax.train_teacher`: its `config.json` says what network,
schedule and prediction it has, and its checkpoints hold the item `params`
(the EMA weights when EMA was on). A BOOT config names that directory in
`teacher.path`; fields it leaves unset (None) are taken from the teacher's
own config, and fields it does set must agree with it.
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import ml_collections

from boot_jax import models
from boot_jax.data import datasets
from boot_jax.diffusion import predictions
from boot_jax.runtime import checkpoint, paths, sharding
from boot_jax.teachers import base

# BOOT teacher key -> how to read it from a teacher-training config.
_INHERITED = {
  "model": lambda tc: tc["model"],
  "schedule": lambda tc: tc["diffusion"]["schedule"],
  "prediction": lambda tc: tc["diffusion"]["prediction"],
  "sample_shape": lambda tc: [
    tc["data"]["image_size"],
    tc["data"]["image_size"],
    tc["data"]["channels"],
  ],
  "num_classes": lambda tc: tc.get("num_classes", 0),
}


class TeacherError(ValueError):
  """A teacher that cannot be loaded as configured."""


def _read_teacher_config(path: str) -> dict:
  if not paths.isdir(path):
    raise TeacherError(f"teacher directory {path!r} does not exist")
  cfg = paths.join(path, "config.json")
  if not paths.isfile(cfg):
    raise TeacherError(
      f"{path!r} holds no config.json: not a teacher directory"
    )
  try:
    return json.loads(paths.read_text(cfg))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise TeacherError(f"cannot read {cfg}: {e}") from None


def _plain(v):
  if isinstance(v, ml_collections.ConfigDict):
    return json.loads(v.to_json_best_effort(sort_keys=True))
  if isinstance(v, tuple):
    return list(v)
  return v


def fill(config) -> None:
  """Fills unset fields of a mutable copy of a `teacher` section from
  `config.path`'s own config (`teachers.resolved` makes the copy).

  Raises:
    TeacherError: missing directory, or a set field that disagrees with the
      teacher's own config.
  """
  if not config.get("path"):
    missing = [k for k in _INHERITED if config.get(k) is None]
    if missing:
      raise TeacherError(
        f"teacher.path is empty and teacher.{missing[0]} is unset: name a "
        "trained teacher directory (or set init='random' and every field)"
      )
    return
  own = _read_teacher_config(config.path)
  for key, read in _INHERITED.items():
    try:
      theirs = read(own)
    except (KeyError, TypeError):
      raise TeacherError(
        f"{config.path}/config.json has no {key}: not written by "
        "boot_jax.train_teacher"
      ) from None
    ours = config.get(key)
    if ours is None:
      config[key] = theirs
    elif _plain(ours) != _plain(theirs):
      raise TeacherError(
        f"teacher.{key} does not fit the teacher in {config.path}: the config "
        f"says {_plain(ours)}, the teacher was trained with {theirs}"
      )


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkTeacher(base.Teacher):
  """One of our networks, read from a teacher work directory (`path`)."""

  path: str | None = None

  def reference_data(self):
    """The teacher's training data when it has classes (for the FID
    classifier), else None."""
    if not self.path:
      return None
    try:
      own = ml_collections.ConfigDict(_read_teacher_config(self.path))
      dataset = datasets.load_dataset(own.data)
    except (TeacherError, datasets.DataError, AttributeError, KeyError):
      return None
    return dataset if dataset.num_classes >= 2 else None


def build(
  config, placement=None, dtype=None, attention: str = "auto"
) -> base.Teacher:
  """Builds a network teacher from a `teacher` config section.

  Keys: `path` (a teacher work directory), `use_ema`, `init` ('checkpoint',
  or 'random' to initialise from `seed`, for tests and benchmarks that need
  a teacher of a given size, not a good one), and `model`, `schedule`,
  `prediction`, `sample_shape`, `num_classes` (taken from the teacher's own
  config when unset).

  Args:
    config: the `teacher` section.
    placement: `(abstract_params, logical_specs) -> shardings`; the
      parameters are restored (or initialised) straight into those
      shardings, never whole on one device. None: default placement.
    dtype: the network's computation dtype (None: float32).
  """
  init = config.get("init", "checkpoint")
  if init not in ("checkpoint", "random"):
    raise TeacherError(
      f"teacher.init must be checkpoint or random, got {init!r}"
    )
  if init == "checkpoint":
    config = base.resolved(config, fill)
  prediction = predictions.canonical_prediction(config.prediction)
  schedule = predictions.make_schedule(config.schedule)
  sample_shape = tuple(config.sample_shape)
  num_classes = int(config.get("num_classes") or 0)
  condition = (
    base.ConditionSpec("class", num_classes=num_classes)
    if num_classes
    else base.ConditionSpec()
  )
  module = models.make_model(
    config.model, sample_shape, num_classes, dtype=dtype, attention=attention
  )

  def init_fn(key):
    return models.init_params(module, key, sample_shape, condition.null(1))

  key = jax.random.key(int(config.get("seed", 0)))
  boxed = models.boxed_abstract_params(module, sample_shape, condition.null(1))
  abstract = nn.meta.unbox(boxed)
  shardings = None
  if placement is not None:
    shardings = placement(abstract, sharding.logical_specs(boxed))
    abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      shardings,
    )
  if init == "random":
    params = jax.jit(init_fn, out_shardings=shardings)(key)
  else:
    try:
      params = checkpoint.read_item(
        paths.join(config.path, "checkpoints"), "params", abstract
      )
    except checkpoint.CheckpointError as e:
      raise TeacherError(f"teacher {config.path}: {e}") from None

  return NetworkTeacher(
    name=config.name,
    apply=base.module_apply(module),
    params=params,
    schedule=schedule,
    prediction=prediction,
    sample_shape=sample_shape,
    condition=condition,
    module=module,
    path=config.get("path") if init == "checkpoint" else None,
  )


def trained(path: str) -> bool:
  """Whether `path` holds a finished teacher: its final step is saved."""
  try:
    steps = _read_teacher_config(path)["train"]["steps"]
  except (TeacherError, KeyError, TypeError):
    return False
  return steps in checkpoint.finished_steps(paths.join(path, "checkpoints"))


def teacher_section(workdir: str) -> ml_collections.ConfigDict:
  """A `teacher` config section reading the teacher in `workdir` (a
  directory written by `boot_jax.train_teacher`)."""
  own = _read_teacher_config(workdir)
  try:
    name = own["model"]["name"]
  except (KeyError, TypeError):
    raise TeacherError(
      f"{workdir}/config.json has no model.name: not written by "
      "boot_jax.train_teacher"
    ) from None
  section = ml_collections.ConfigDict(
    {"name": name, "path": paths.abspath(workdir), "init": "checkpoint"}
  )
  for key in _INHERITED:
    section[key] = None
  fill(section)
  return section
