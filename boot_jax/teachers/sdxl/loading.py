"""Reading a local diffusers Stable Diffusion XL folder.

The folder is what `StableDiffusionXLPipeline.save_pretrained` writes:

    FOLDER/model_index.json          (force_zeros_for_empty_prompt)
    FOLDER/unet/                     UNet2DConditionModel with
                                     addition_embed_type "text_time"
    FOLDER/vae/
    FOLDER/text_encoder/             CLIPTextModel
    FOLDER/text_encoder_2/           CLIPTextModelWithProjection
    FOLDER/tokenizer/, tokenizer_2/  CLIP tokenizers
    FOLDER/scheduler/scheduler_config.json

Weights are read as the `sd` family reads them (`teachers.sd.loading`:
safetensors, one file, shards with an index, or the fp16 variant; never
pickles), onto our own networks (`models.sd_unet`, `models.sd_vae`,
`models.clip_text`).
"""

from __future__ import annotations

import functools
import os

import jax

from boot_jax.models import sd_unet
from boot_jax.teachers import folders
from boot_jax.teachers.sd import loading as sd_loading
from boot_jax.teachers.sd import sd_teacher

PARTS = (
  "unet",
  "vae",
  "text_encoder",
  "text_encoder_2",
  "tokenizer",
  "tokenizer_2",
  "scheduler",
)
SDError = sd_loading.SDError


def _not_xl(kind: str, path: str) -> str | None:
  sd3 = folders.sd3_reason(kind, path, "Stable Diffusion XL")
  if sd3:
    return sd3
  if kind.startswith("IF"):
    return (
      f"{path} is a DeepFloyd IF folder ({kind}), not Stable Diffusion XL: "
      "use configs/if_i_xl.py, if_i_l.py or if_i_m.py"
    )
  second = os.path.isdir(os.path.join(path, "text_encoder_2"))
  sd = kind.startswith("StableDiffusion") and "XL" not in kind
  if sd or (not kind and not second):
    sign = kind or "one text encoder, no text_encoder_2/"
    return (
      f"{path} is a Stable Diffusion 1.x/2.x folder ({sign}), not Stable "
      "Diffusion XL: use configs/sd15.py or configs/sd21.py"
    )
  return None


def check_folder(path: str) -> dict:
  """Checks a diffusers SDXL folder; returns the UNet config."""
  folders.check_parts(path, PARTS, "Stable Diffusion XL", SDError, _not_xl)
  unet = sd_loading.read_json(
    os.path.join(path, "unet", "config.json"), "the UNet"
  )
  kind = unet.get("_class_name")
  if kind != sd_loading.UNET_CLASS:
    raise SDError(
      f"{path}/unet is a {kind or 'model without _class_name'}, not a "
      f"{sd_loading.UNET_CLASS}: not a Stable Diffusion XL folder"
    )
  try:
    sd_unet.check_config(unet)
  except sd_unet.SDConfigError as e:
    raise SDError(f"{path}/unet: {e}") from None
  if unet.get("addition_embed_type") != "text_time":
    raise SDError(
      f"{path}/unet has addition_embed_type="
      f"{unet.get('addition_embed_type')!r}, not 'text_time': not an SDXL "
      "UNet (use configs/sd15.py or configs/sd21.py for SD 1.x and 2.x)"
    )
  return unet


def force_zeros(path: str) -> bool:
  """Whether the pipeline uses zero embeddings for an empty negative
  prompt (`force_zeros_for_empty_prompt` in model_index.json; the
  pipeline's default is True)."""
  index = os.path.join(path, "model_index.json")
  if not os.path.isfile(index):
    return True
  cfg = sd_loading.read_json(index, "the pipeline index")
  return bool(cfg.get("force_zeros_for_empty_prompt", True))


@functools.cache
def parts(path: str) -> dict:
  """The VAE, both text encoders and both tokenizers (cached per folder).

  `text_apply(params, ids [B, 2L])` is SDXL's prompt encoding (as
  `StableDiffusionXLPipeline.encode_prompt` computes it): each encoder's
  penultimate hidden state, concatenated, `[B, L, D1 + D2]`, and the
  second encoder's projected pooled state `[B, P]`, packed into one array
  (`sd_teacher.pack_pooled`); the ids are the first tokenizer's then the
  second's.
  """
  vae = sd_loading.vae_parts(path)
  one, params_1 = sd_loading.text_encoder(path, "text_encoder")
  two, params_2 = sd_loading.text_encoder(path, "text_encoder_2", True)
  tokenizers = (
    sd_loading.tokenizer(path, "tokenizer"),
    sd_loading.tokenizer(path, "tokenizer_2"),
  )
  lengths = {t.model_max_length for t in tokenizers}
  if len(lengths) != 1:
    raise SDError(
      f"{path}: the two tokenizers' lengths differ ({sorted(lengths)})"
    )

  def text_apply(params, ids):
    ids_1, ids_2 = jax.numpy.split(ids, 2, axis=1)
    out_1 = one.apply({"params": params["text_encoder"]}, ids_1)
    out_2 = two.apply({"params": params["text_encoder_2"]}, ids_2)
    text = jax.numpy.concatenate(
      [out_1["hidden_states"][-2], out_2["hidden_states"][-2]], axis=-1
    )
    return sd_teacher.pack_pooled(text, out_2["text_embeds"])

  return dict(
    vae,
    text_apply=text_apply,
    text_forward=jax.jit(text_apply),
    text_params=dict(text_encoder=params_1, text_encoder_2=params_2),
    tokenizer=tokenizers[0],
    tokenizers=tokenizers,
    pooled_width=int(two.text_config.get("projection_dim", 512)),
    force_zeros=force_zeros(path),
  )
