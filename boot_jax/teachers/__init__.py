"""Teacher families, chosen by name from `TEACHERS`.

A family is one module of this package with a `build(config, placement,
dtype) -> Teacher` function (its subclass of `base.Teacher` holds what is
particular to it). Adding a family = one module (or one subpackage, as
`sd/`, `sdxl/`, `sd3/` and `deepfloyd_if/`), its configs and its tests,
plus one line in `TEACHERS` and, when it needs an optional dependency,
one in `EXTRAS` (docs/architecture.md).
"""

from __future__ import annotations

from boot_jax.teachers import base, gmm, network
from boot_jax.teachers.base import ConditionSpec, Teacher
from boot_jax.teachers.deepfloyd_if import if_teacher
from boot_jax.teachers.sd import sd_teacher
from boot_jax.teachers.sd3 import sd3_teacher
from boot_jax.teachers.sdxl import sdxl_teacher

TEACHERS = {
  "gmm": gmm,
  "unet": network,
  "mlp": network,
  "sd": sd_teacher,
  "sdxl": sdxl_teacher,
  "sd3": sd3_teacher,
  "if": if_teacher,
}


# The pip extras of boot_jax (setup.py's extras_require) that a family
# needs beyond the core install; families not named need none.
EXTRAS = {
  "sd": ("sd",),
  "sdxl": ("sd",),
  "sd3": ("sd3",),
  "if": ("if",),
}

# URL schemes that gcsfs (the `gcs` extra) reads.
_GCS_SCHEMES = ("gs://", "gcs://")


def family(name: str):
  """The family module of a teacher name."""
  try:
    return TEACHERS[name]
  except KeyError:
    raise ValueError(
      f"unknown teacher {name!r}; expected one of {sorted(TEACHERS)}"
    ) from None


def _strings(value):
  """Every string inside a config section (nested sections, lists)."""
  if isinstance(value, str):
    yield value
  elif hasattr(value, "items"):
    for v in value.values():
      yield from _strings(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _strings(v)


def required_extras(teacher_config) -> tuple[str, ...]:
  """The pip extras of boot_jax that the teacher of a config needs.

  The family's own (`EXTRAS`: 'sd' for Stable Diffusion, 'if' for
  DeepFloyd IF), then 'gcs' when one of the section's values is a
  Cloud Storage URL (`teacher.path`, `teacher.prompts`, ...). The
  accelerator's extra ('tpu', 'cuda') and the work directory's are the
  launcher's to add.

  Args:
    teacher_config: the `teacher` section of a train config.

  Raises:
    ValueError: for an unknown teacher name.
  """
  name = teacher_config.name
  family(name)
  extras = list(EXTRAS.get(name, ()))
  if any(s.startswith(_GCS_SCHEMES) for s in _strings(teacher_config)):
    extras.append("gcs")
  return tuple(extras)


def resolved(section):
  """The `teacher` section with the fields its family derives filled in.

  A mixture's arrays, a network teacher's fields read from its work
  directory; other families' sections come back as a mutable copy. The
  given section (possibly read-only `Settings`) is never changed.
  """
  fill = getattr(family(section.name), "fill", None)
  return base.resolved(section, fill)


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
  "EXTRAS",
  "TEACHERS",
  "ConditionSpec",
  "Teacher",
  "build_teacher",
  "family",
  "resolved",
  "required_extras",
]
