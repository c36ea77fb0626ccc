"""Teacher families, chosen by name from `TEACHERS`."""

from __future__ import annotations

from boot_jax.teachers import gmm, network
from boot_jax.teachers.base import ConditionSpec, Teacher

TEACHERS = {
  "gmm": gmm.build,
  "unet": network.build,
  "mlp": network.build,
}


def build_teacher(config) -> Teacher:
  """Builds the teacher named by `config.name` from its config section."""
  try:
    builder = TEACHERS[config.name]
  except KeyError:
    raise ValueError(
      f"unknown teacher {config.name!r}; expected one of {sorted(TEACHERS)}"
    ) from None
  return builder(config)


__all__ = ["TEACHERS", "ConditionSpec", "Teacher", "build_teacher"]
