"""Teachers that are one of our own networks (UNet for pixels, MLP)."""

from __future__ import annotations

import dataclasses

import jax

from boot_jax import diffusion, models
from boot_jax.teachers import base


def build(config) -> base.Teacher:
  """Builds a network teacher from a `teacher` config section.

  Keys: `model` (a model section), `schedule`, `prediction` ('eps', 'v' or
  'x0'), `sample_shape`, `num_classes` (0 for unconditional) and `init`:
  'random' initialises the weights from `seed` (for tests and benchmarks
  that need a teacher of a given size, not a good one).
  """
  prediction = diffusion.canonical_prediction(config.prediction)
  schedule = diffusion.make_schedule(config.schedule)
  sample_shape = tuple(config.sample_shape)
  num_classes = int(config.get("num_classes", 0))
  condition = (
    base.ConditionSpec("class", num_classes=num_classes)
    if num_classes
    else base.ConditionSpec()
  )
  module = models.make_model(config.model, sample_shape, num_classes)
  init = config.get("init", "random")
  if init != "random":
    raise ValueError(
      f"teacher.init={init!r} is not supported for a {config.name} teacher; "
      "use 'random'"
    )

  def apply(params, x_t, t, cond=None):
    return module.apply({"params": params}, x_t, t, cond)

  teacher = base.Teacher(
    name=config.name,
    apply=apply,
    params=None,
    schedule=schedule,
    prediction=prediction,
    sample_shape=sample_shape,
    condition=condition,
    module=module,
  )
  params = models.init_params(
    module,
    jax.random.key(int(config.get("seed", 0))),
    sample_shape,
    condition.null(1),
  )
  return dataclasses.replace(teacher, params=params)
