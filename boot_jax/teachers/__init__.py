"""Teacher families, chosen by name from `TEACHERS`.

A family is one module of this package with a `build(config, placement,
dtype) -> Teacher` function (its subclass of `base.Teacher` holds what is
particular to it). Adding a family = one module (or one subpackage, as
`sd/` and `deepfloyd_if/`), its configs and its tests, plus one line in
`TEACHERS` (docs/architecture.md).
"""

from __future__ import annotations

from boot_jax.teachers import gmm, network
from boot_jax.teachers.base import ConditionSpec, Teacher
from boot_jax.teachers.deepfloyd_if import if_teacher
from boot_jax.teachers.sd import sd_teacher

TEACHERS = {
  "gmm": gmm,
  "unet": network,
  "mlp": network,
  "sd": sd_teacher,
  "if": if_teacher,
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


__all__ = [
  "TEACHERS",
  "ConditionSpec",
  "Teacher",
  "build_teacher",
  "family",
]
