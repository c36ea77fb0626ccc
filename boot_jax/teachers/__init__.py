"""Teacher families, chosen by name from `TEACHERS`."""

from __future__ import annotations

from boot_jax.teachers import gmm, network, sd
from boot_jax.teachers.base import ConditionSpec, Teacher

TEACHERS = {
  "gmm": gmm.build,
  "unet": network.build,
  "mlp": network.build,
  "sd": sd.build,
}


def build_teacher(config, placement=None, dtype=None) -> Teacher:
  """Builds the teacher named by `config.name` from its config section.

  Args:
    config: the `teacher` section.
    placement: `(abstract_params, logical_specs) -> shardings`, where the
      frozen parameters are put (None: the default device).
    dtype: computation dtype of network teachers (None: float32).
  """
  try:
    builder = TEACHERS[config.name]
  except KeyError:
    raise ValueError(
      f"unknown teacher {config.name!r}; expected one of {sorted(TEACHERS)}"
    ) from None
  return builder(config, placement=placement, dtype=dtype)


__all__ = ["TEACHERS", "ConditionSpec", "Teacher", "build_teacher"]
