"""Teacher families, chosen by name from `TEACHERS`.

A family is one module of this package with a `build(config, placement,
dtype) -> Teacher` function (its subclass of `base.Teacher` holds what is
particular to it) and, optionally, `prepare(config, printer)`: work done
before the teacher can be built (our network teachers train a missing
recipe teacher there). Adding a family = one module, its configs and its
tests, plus one line in `TEACHERS`.
"""

from __future__ import annotations

from boot_jax.teachers import deepfloyd_if, gmm, network, sd
from boot_jax.teachers.base import ConditionSpec, Teacher

TEACHERS = {
  "gmm": gmm,
  "unet": network,
  "mlp": network,
  "sd": sd,
  "if": deepfloyd_if,
}


def family(name: str):
  """The family module of a teacher name."""
  try:
    return TEACHERS[name]
  except KeyError:
    raise ValueError(
      f"unknown teacher {name!r}; expected one of {sorted(TEACHERS)}"
    ) from None


def build_teacher(
  config, placement=None, dtype=None, attention: str = "auto"
) -> Teacher:
  """Builds the teacher named by `config.name` from its config section.

  Args:
    config: the `teacher` section.
    placement: `(abstract_params, logical_specs) -> shardings`, where the
      frozen parameters are put (None: the default device).
    dtype: computation dtype of network teachers (None: float32).
    attention: the attention implementation (`models.attention`).
  """
  return family(config.name).build(
    config, placement=placement, dtype=dtype, attention=attention
  )


def prepare(config, printer=print) -> None:
  """Runs the family's preparation (e.g. training a recipe teacher)."""
  fn = getattr(family(config.name), "prepare", None)
  if fn is not None:
    fn(config, printer)


__all__ = [
  "TEACHERS",
  "ConditionSpec",
  "Teacher",
  "build_teacher",
  "family",
  "prepare",
]
