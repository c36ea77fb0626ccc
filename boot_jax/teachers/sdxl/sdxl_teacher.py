"""Stable Diffusion XL teachers from a local diffusers folder.

What SDXL's pipeline adds to Stable Diffusion's, and where it is here:
- two CLIP text encoders, conditioned on their penultimate hidden states
  concatenated, and the pooled projection of the second (`loading.parts`);
  the condition is one packed array (`sd_teacher.pack_pooled`), so that
  prompt caching, sharding and guidance treat it as any text embedding;
- micro-conditioning: the original size, crop corner and target size,
  `(H, W, top, left, H, W)` in pixels, fixed for a run (`teacher.
  original_size`, `teacher.crop_top_left`; the target is the resolution);
- zero embeddings for guidance's unconditional branch when the negative
  prompt is empty and the folder says `force_zeros_for_empty_prompt`.
The UNet, VAE, DDIM options and export are the `sd` family's.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from boot_jax.teachers import base
from boot_jax.teachers.sd import export, sd_teacher
from boot_jax.teachers.sd import loading as sd_loading
from boot_jax.teachers.sdxl import loading

SDError = sd_loading.SDError
COPIED = export.COPIED + ("text_encoder_2", "tokenizer_2")


@dataclasses.dataclass(frozen=True, eq=False)
class SDXLTeacher(sd_teacher.SDTeacher):
  """Stable Diffusion XL: the `sd` family's teacher with SDXL's text
  conditioning (module doc)."""

  def export_extras(self, out_dir: str, student, params) -> list[str]:
    """A diffusers SDXL folder of the student beside the jax artifact,
    with the PyTorch one-step function (`teachers/sd/export.py`)."""
    export.export_diffusers(
      self.folder,
      jax.device_get(params),
      student,
      os.path.join(out_dir, "diffusers"),
      check=loading.check_folder,
      copied=COPIED,
    )
    return ["diffusers/"]


def time_ids(config, resolution: int) -> tuple[float, ...]:
  """SDXL's micro-conditioning `(orig_h, orig_w, top, left, H, W)`."""
  original = config.get("original_size")
  original = resolution if original is None else original
  crop = config.get("crop_top_left")
  crop = (0, 0) if crop is None else crop
  try:
    original = int(original)
    top, left = (int(v) for v in crop)
  except (TypeError, ValueError):
    raise SDError(
      f"teacher.original_size={config.get('original_size')!r} and "
      f"teacher.crop_top_left={config.get('crop_top_left')!r}: expected "
      "a size in pixels and two integers"
    ) from None
  if original <= 0 or top < 0 or left < 0:
    raise SDError(
      f"teacher.original_size={original} must be positive and "
      f"teacher.crop_top_left={(top, left)} not negative"
    )
  return tuple(
    float(v) for v in (original, original, top, left, resolution, resolution)
  )


def build(
  config, placement=None, dtype=None, attention: str = "auto"
) -> base.Teacher:
  """An SDXL teacher from `config.path` (a diffusers SDXL folder).

  Keys: those of the `sd` family (`sd_teacher.build`; the resolution
  defaults to 1024), and `original_size` (pixels; None: the resolution)
  and `crop_top_left` (pixels), SDXL's micro-conditioning.
  """
  return sd_teacher.build_from_folder(
    config, LAYOUT, placement, dtype, attention
  )


LAYOUT = sd_teacher.Layout(
  check_folder=loading.check_folder,
  parts=loading.parts,
  teacher_cls=SDXLTeacher,
  resolution=1024,
  encoders=("text_encoder", "text_encoder_2"),
  micro=time_ids,
)
