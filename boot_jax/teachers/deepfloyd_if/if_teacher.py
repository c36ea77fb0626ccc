"""DeepFloyd IF stage I teachers from a local diffusers folder (pixels).

The UNet is our Flax port (`models.if_unet`), the text encoder our T5
(`models.t5_encoder`); the folder's layout, checks and weight conversion
are in `loading`. `IFTeacher` is the family: samples are
64x64 RGB pixels in [-1, 1] (no VAE), prompts are encoded by T5 as IF's
pipeline encodes them (lower case, 77 tokens, padding masked), and the
teacher's own DDIM processes each step's clean estimate as the folder's
scheduler config says: IF's dynamic thresholding when it says
`thresholding` (IF's folders do), else clipping when it says
`clip_sample`; `teacher.thresholding` true or false overrides the folder.

BOOT distils the teacher's x0-prediction unprocessed, as for every other
teacher (the student's images are clipped to [-1, 1] like all pixels);
the clipping or thresholding applies to the teacher's own sampler
(`sample --teacher`, evaluation, the DDIM parity test).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from boot_jax.diffusion import predictions
from boot_jax.models import if_unet
from boot_jax.runtime import paths, sharding
from boot_jax.teachers import base
from boot_jax.teachers.deepfloyd_if.loading import (  # noqa: F401 - the family's API
  MAX_TOKENS,
  UNET_WEIGHTS,
  IFError,
  check_folder,
  convert_unet,
  schedule_config,
  t5_parts,
  tokenize,
  weight_files,
)


@dataclasses.dataclass(frozen=True, eq=False)
class IFTeacher(base.Teacher):
  """DeepFloyd IF stage I: pixel samples, T5 prompts.

  Attributes:
    t5: the text encoder, its parameters and tokenizer (`t5_parts`).
    prompt_loader: `() -> PromptSet` for the configured prompt file, or
      None; called once, on first use of `prompts()`.
    folder: the diffusers folder it was read from.
    x0_fn: what its own DDIM does to each clean estimate (None: nothing).
  """

  t5: Any = None
  prompt_loader: Any = None
  folder: str | None = None
  x0_fn: Any = None

  def tokenize(self, texts):
    return tokenize(self.t5["tokenizer"], texts)

  def encode_text(self, texts):
    return self.t5["forward_jit"](self.t5["params"], self.tokenize(texts))

  @property
  def text_params(self):
    return self.t5["params"]

  def encode_tokens(self, text_params, ids):
    """Embeddings of token ids (traceable: the online encoding's step)."""
    return self.t5["forward"](text_params, ids)

  def prompts(self):
    return None if self.prompt_loader is None else self.prompt_loader()


def build(
  config, placement=None, dtype=None, attention: str = "auto"
) -> base.Teacher:
  """A DeepFloyd IF stage I teacher from `config.path` (a diffusers folder).

  Keys: `path`, `resolution` (pixels; None: the UNet's `sample_size`, 64
  for IF-I), `prompts`, `prompt_column`, `prompt_cache`, `text_encoding`
  (as for Stable Diffusion, see `boot_jax.prompts`), `negative_prompt`
  (the null condition's text; default the empty prompt, as IF's pipeline),
  `thresholding` (None, the default: the teacher's own DDIM uses IF's
  dynamic thresholding when the folder's scheduler config says
  `thresholding`, else clips at `clip_sample_range` when it says
  `clip_sample`; True or False overrides the folder).
  """
  path = config.get("path")
  if path and paths.is_remote(path):
    if not paths.isdir(path):
      raise IFError(f"teacher folder {path!r} does not exist")
    path = paths.local_copy(path)  # read once into the local cache
  unet_cfg = check_folder(path)
  table, sampler = schedule_config(path)
  path = os.path.abspath(path)
  t5 = t5_parts(path)
  hid = unet_cfg.get("encoder_hid_dim") or unet_cfg.get("cross_attention_dim")
  if int(hid) != t5["width"]:
    raise IFError(
      f"{path}: the text encoder gives {t5['width']} features but the UNet "
      f"reads {hid} (encoder_hid_dim): parts of different models"
    )
  resolution = int(
    config.get("resolution") or unet_cfg.get("sample_size") or 64
  )
  levels = len(unet_cfg["block_out_channels"]) - 1
  if resolution % 2**levels:
    raise IFError(
      f"teacher.resolution={resolution} is not divisible by {2**levels} "
      "(the UNet halves it at each of its levels)"
    )
  sample_shape = (resolution, resolution, 3)
  condition = base.ConditionSpec("text", shape=(MAX_TOKENS, t5["width"]))
  module = if_unet.IFUNet(unet_cfg, dtype=dtype, attention=attention)
  boxed = jax.eval_shape(
    module.init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1,) + sample_shape, jnp.float32),
    jax.ShapeDtypeStruct((1,), jnp.float32),
    jax.ShapeDtypeStruct((1,) + condition.shape, jnp.float32),
  )["params"]
  abstract = nn.meta.unbox(boxed)
  params = convert_unet(
    weight_files(os.path.join(path, "unet"), UNET_WEIGHTS), abstract
  )
  if placement is not None:
    params = jax.device_put(
      params, placement(abstract, sharding.logical_specs(boxed))
    )

  def encode(texts):
    return t5["forward_jit"](t5["params"], tokenize(t5["tokenizer"], texts))

  wanted = config.get("thresholding")
  thresholding = None if wanted is None else bool(wanted)

  return IFTeacher(
    **base.text_teacher_fields(config, path, module, params, table, encode),
    prediction="eps",
    sample_shape=sample_shape,
    condition=condition,
    ddim_spacing=(sampler["spacing"], sampler["offset"]),
    t5=t5,
    folder=path,
    x0_fn=predictions.x0_processing(sampler, thresholding),
  )
