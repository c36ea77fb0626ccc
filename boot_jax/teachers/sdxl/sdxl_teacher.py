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

import flax.linen as nn
import jax
import jax.numpy as jnp

from boot_jax.diffusion import predictions
from boot_jax.runtime import paths
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

  Keys: those of the `sd` family (`sd_teacher.build`), and
  `original_size` (pixels; None: the resolution) and `crop_top_left`
  (pixels), SDXL's micro-conditioning.
  """
  path = config.get("path")
  if path and paths.is_remote(path):
    if not paths.isdir(path):
      raise SDError(f"teacher folder {path!r} does not exist")
    path = paths.local_copy(path)  # read once into the local cache
  unet_cfg = loading.check_folder(path)
  table, native, options = sd_loading.schedule_config(path)
  prediction = predictions.canonical_prediction(native)
  wanted = config.get("prediction")
  if wanted and predictions.canonical_prediction(wanted) != prediction:
    raise SDError(
      f"teacher.prediction={wanted!r} but {path}/scheduler says {native!r}"
    )
  parts = loading.parts(os.path.abspath(path))
  resolution = int(config.get("resolution") or 1024)
  factor = parts["vae_factor"]
  if resolution % factor:
    raise SDError(
      f"teacher.resolution={resolution} is not divisible by the VAE's "
      f"factor {factor}"
    )
  latent = resolution // factor
  sample_shape = (latent, latent, int(unet_cfg.get("in_channels", 4)))
  length = parts["tokenizer"].model_max_length
  width = int(unet_cfg.get("cross_attention_dim", 2048))
  pooled = parts["pooled_width"]
  rows = -(-pooled // width)
  condition = base.ConditionSpec("text", shape=(length + rows, width))
  micro = (length, pooled, time_ids(config, resolution))
  module = sd_teacher.SDUNet(
    unet_cfg, dtype=dtype, attention=attention, micro=micro
  )
  abstract = sd_teacher.unet_params_abstract(
    module, sample_shape, condition.shape
  )
  params = sd_loading.load_part(
    os.path.join(path, "unet"),
    nn.meta.unbox(abstract["unet"]),
    "diffusion_flax_model.msgpack",
    "diffusion_pytorch_model",
    "UNet",
  )
  params = {"unet": params}
  if placement is not None:
    specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
    params = jax.device_put(params, placement(params, specs))

  def encode(texts):
    return sd_teacher.encode_prompts(parts, texts)

  fields = base.text_teacher_fields(
    config,
    path,
    module,
    params,
    table,
    encode,
    encoders=("text_encoder", "text_encoder_2"),
  )
  if parts["force_zeros"] and not config.get("negative_prompt"):
    # The pipeline's unconditional branch for an empty negative prompt.
    fields["null_embedding"] = jnp.zeros(condition.shape, jnp.float32)
  return SDXLTeacher(
    **fields,
    prediction=prediction,
    sample_shape=sample_shape,
    condition=condition,
    ddim_spacing=(options["spacing"], options["offset"]),
    x0_fn=predictions.x0_processing(options, config.get("thresholding")),
    parts=parts,
    folder=os.path.abspath(path),
    attention=attention,
  )
