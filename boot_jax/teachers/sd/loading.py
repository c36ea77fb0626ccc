"""Reading a local diffusers Stable Diffusion folder: checks, weights, parts.

The folder is what `StableDiffusionPipeline.save_pretrained` writes:

    FOLDER/model_index.json
    FOLDER/unet/config.json         + diffusion_pytorch_model.safetensors
                                      (one file, shards with an index json,
                                      or the fp16 variant), or
                                      diffusion_flax_model.msgpack
    FOLDER/vae/...                  (same weight forms)
    FOLDER/text_encoder/config.json + model.safetensors (same forms) or
                                      flax_model.msgpack
    FOLDER/tokenizer/               (CLIP: vocab.json, merges.txt)
    FOLDER/scheduler/scheduler_config.json

Nothing touches the network. The networks are our own ports
(`models.sd_unet`, `models.sd_vae`, `models.clip_text`); PyTorch weights
are read only from safetensors (never pickles), one shard at a time, and
renamed by rule onto abstract parameters: no random weights are
materialised. Flax msgpack weights, which diffusers and transformers wrote
before they dropped Flax, are read too (the UNet's keys are ours already;
the VAE's and CLIP's older names are renamed)."""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from boot_jax.models import clip_text, sd_unet, sd_vae, weights
from boot_jax.teachers import folders

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
UNET_CLASS = "UNet2DConditionModel"


class SDError(folders.FolderError):
  """A Stable Diffusion folder that cannot be loaded as configured."""


def read_json(path: str, what: str) -> dict:
  return folders.read_json(path, what, SDError)


def _not_sd(kind: str, path: str) -> str | None:
  sd3 = folders.sd3_reason(kind, path, "Stable Diffusion 1.x or 2.x")
  if sd3:
    return sd3
  if kind.startswith("IF"):
    return (
      f"{path} is a DeepFloyd IF folder ({kind}), not Stable Diffusion: "
      "use configs/if_i_xl.py, if_i_l.py or if_i_m.py"
    )
  second = os.path.isdir(os.path.join(path, "text_encoder_2"))
  if "XL" in kind or second:
    sign = kind if "XL" in kind else "a second text encoder, text_encoder_2/"
    return (
      f"{path} is a Stable Diffusion XL folder ({sign}): the sd family "
      "reads SD 1.x and 2.x folders (one text encoder, no "
      "micro-conditioning)"
    )
  return None


def check_folder(path: str) -> dict:
  """Checks a diffusers Stable Diffusion folder; returns the UNet config."""
  folders.check_parts(path, PARTS, "Stable Diffusion", SDError, _not_sd)
  unet = read_json(os.path.join(path, "unet", "config.json"), "the UNet")
  kind = unet.get("_class_name")
  if kind != UNET_CLASS:
    raise SDError(
      f"{path}/unet is a {kind or 'model without _class_name'}, not a "
      f"{UNET_CLASS}: not a Stable Diffusion folder"
    )
  try:
    sd_unet.check_config(unet)
  except sd_unet.SDConfigError as e:
    raise SDError(f"{path}/unet: {e}") from None
  if unet.get("addition_embed_type"):
    # The UNet port runs SDXL's added conditioning; this family does not
    # feed it.
    raise SDError(
      f"{path}/unet has addition_embed_type="
      f"{unet['addition_embed_type']!r} (an SDXL UNet): the sd family "
      "reads SD 1.x and 2.x UNets"
    )
  return unet


def schedule_config(path: str) -> tuple[dict, str, dict]:
  """The noise table, native prediction and DDIM options
  (`folders.ddim_options`: spacing, clipping, thresholding) from
  scheduler_config.json."""
  cfg = read_json(
    os.path.join(path, "scheduler", "scheduler_config.json"), "the scheduler"
  )
  # Where the file is silent: SD's scheduler's defaults.
  table = folders.noise_table(cfg, "scaled_linear", 0.00085, 0.012, False)
  options = folders.ddim_options(cfg)
  return table, cfg.get("prediction_type", "epsilon"), options


def _read_msgpack(path: str):
  import flax.serialization  # noqa: PLC0415

  with open(path, "rb") as f:
    raw = f.read()
  try:
    tree = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # noqa: BLE001 - msgpack raises many types
    reason = " ".join(str(e).split())[:200]
    raise SDError(
      f"cannot read {path} (truncated, or not Flax msgpack weights): "
      f"{type(e).__name__}: {reason}"
    ) from None
  if not isinstance(tree, dict):
    raise SDError(f"cannot read {path}: not a tree of Flax weights")
  return tree


def load_part(
  folder: str,
  abstract,
  flax_name: str,
  pt_base: str,
  what: str,
  rename_pt=None,
  rename_flax=None,
):
  """A part's float32 weights onto `abstract`: Flax msgpack weights
  (`flax_name`, as diffusers and transformers wrote them before they
  dropped Flax; each key path renamed by `rename_flax`), else PyTorch
  safetensors (`pt_base`: one file, shards with an index, or the fp16
  variant), renamed by rule (`folders.convert_by_rule`, after
  `rename_pt`)."""
  msgpack = os.path.join(folder, flax_name)
  if not os.path.isfile(msgpack):
    files = folders.weight_files(folder, pt_base, SDError)
    return folders.convert_by_rule(files, abstract, what, SDError, rename_pt)
  params = weights.Assembly(abstract, SDError)
  flat = traverse_util.flatten_dict(_read_msgpack(msgpack))
  for key, value in flat.items():
    new = tuple(rename_flax(key)) if rename_flax else key
    if new not in params:
      raise SDError(
        f"{msgpack} holds {'/'.join(key)}, which the {what} config does "
        "not have: weights of another model"
      )
    params.put(new, np.asarray(value), "/".join(key))
  return params.tree(f"the {what} weights")


def vae_flax_key(key: tuple) -> tuple:
  """A diffusers Flax VAE key path as ours (its attention's old names)."""
  old = {"query": "to_q", "key": "to_k", "value": "to_v"}
  return tuple("to_out_0" if k == "proj_attn" else old.get(k, k) for k in key)


def clip_flax_key(key: tuple) -> tuple:
  """A transformers Flax CLIP key path as ours (`layers/3` is
  `layers_3`)."""
  out = []
  for k in key:
    if k.isdigit() and out and out[-1] == "layers":
      out[-1] = f"layers_{k}"
    else:
      out.append(k)
  return tuple(out)


def read_safetensors(path: str) -> dict:
  """A safetensors file as numpy arrays (one-line SDError otherwise)."""
  return folders.read_safetensors(path, SDError)


def vae_parts(path: str) -> dict:
  """The VAE of a folder (`models.sd_vae`): its float32 parameters, a
  jitted decoder and the latent scaling (`scaling_factor`,
  `shift_factor`, the spatial factor)."""
  vae_cfg = read_json(os.path.join(path, "vae", "config.json"), "the VAE")
  try:
    sd_vae.check_config(vae_cfg)
  except sd_vae.VAEConfigError as e:
    raise SDError(f"{path}: {e}") from None
  vae = sd_vae.AutoencoderKL(vae_cfg)
  size = int(vae_cfg.get("sample_size", 64))
  channels = int(vae_cfg.get("in_channels", 3))
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  abstract = jax.eval_shape(vae.init, jax.random.key(0), x)["params"]
  vae_params = load_part(
    os.path.join(path, "vae"),
    nn.meta.unbox(abstract),
    "diffusion_flax_model.msgpack",
    "diffusion_pytorch_model",
    "VAE",
    rename_pt=sd_vae.legacy_key,
    rename_flax=vae_flax_key,
  )

  def vae_decode(params, z, attention="auto"):
    module = sd_vae.AutoencoderKL(vae_cfg, attention=attention)
    return module.apply({"params": params}, z, method=module.decode)

  shift = vae_cfg.get("shift_factor")
  return dict(
    # Compiled once per folder (and per batch shape), not per call.
    vae_decode=jax.jit(vae_decode, static_argnames="attention"),
    vae_params=vae_params,
    scaling_factor=float(vae_cfg.get("scaling_factor") or 0.18215),
    shift_factor=float(shift or 0.0),
    vae_factor=2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1),
  )


def text_encoder(path: str, part: str = "text_encoder", projection=False):
  """A CLIP text encoder of a folder (`models.clip_text`) and its float32
  parameters: `(module, params)`. `projection`: the encoder is a
  `CLIPTextModelWithProjection` (SDXL's second)."""
  what = part.replace("_", " ")  # "text encoder", "text encoder 2"
  text_cfg = read_json(os.path.join(path, part, "config.json"), f"the {what}")
  try:
    clip_text.check_config(text_cfg)
  except clip_text.CLIPConfigError as e:
    raise SDError(f"{path}/{part}: {e}") from None
  text = clip_text.CLIPText(text_cfg, projection=projection)
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: text.init(jax.random.key(0), ids))
  params = load_part(
    os.path.join(path, part),
    nn.meta.unbox(abstract["params"]),
    "flax_model.msgpack",
    "model",
    what,
    rename_pt=clip_text.weight_key,
    rename_flax=clip_flax_key,
  )
  return text, params


def tokenizer(path: str, part: str = "tokenizer"):
  """The CLIP tokenizer in `path`/`part` (transformers' `CLIPTokenizer`)."""
  from transformers import CLIPTokenizer  # noqa: PLC0415

  return folders.read_tokenizer(
    CLIPTokenizer,
    os.path.join(path, part),
    ("vocab.json", "merges.txt"),
    SDError,
  )


@functools.cache
def _vae_and_text(path: str):
  """The VAE (`models.sd_vae`) and CLIP text encoder (`models.clip_text`)
  with their float32 parameters, and the tokenizer (cached)."""
  vae = vae_parts(path)
  text, text_params = text_encoder(path)

  def text_forward(params, ids):
    # Stable Diffusion's pipelines attend to every token (no padding mask)
    # and condition on the last state.
    return text.apply({"params": params}, ids)["last_hidden_state"]

  return dict(
    vae,
    # Compiled once per folder (and per batch shape), not per call.
    text_forward=jax.jit(text_forward),
    text_apply=text_forward,
    text_params=text_params,
    tokenizer=tokenizer(path),
  )
