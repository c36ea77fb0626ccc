"""Reading a local diffusers Stable Diffusion folder: checks, weights, parts.

The folder is what `StableDiffusionPipeline.save_pretrained` writes:

    FOLDER/model_index.json
    FOLDER/unet/config.json         + diffusion_flax_model.msgpack, or
                                      diffusion_pytorch_model.safetensors
    FOLDER/vae/...                  (same two weight formats)
    FOLDER/text_encoder/config.json + flax_model.msgpack or model.safetensors
    FOLDER/tokenizer/               (CLIP: vocab.json, merges.txt)
    FOLDER/scheduler/scheduler_config.json

Nothing touches the network. PyTorch weights are read only from
safetensors (never pickles) and converted on load with diffusers' own key
mapping, onto abstract parameters: no random weights are materialised.

diffusers' Flax modules are imported through `diffusers_flax`, which makes
them compute what their PyTorch originals compute.
"""

from __future__ import annotations

import functools
import os
import types

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.models import weights
from boot_jax.teachers import folders
from boot_jax.teachers.sd import diffusers_flax

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
UNET_CLASS = "UNet2DConditionModel"


class SDError(folders.FolderError):
  """A Stable Diffusion folder that cannot be loaded as configured."""


def read_json(path: str, what: str) -> dict:
  return folders.read_json(path, what, SDError)


def _not_sd(kind: str, path: str) -> str | None:
  if kind.startswith("IF"):
    return (
      f"{path} is a DeepFloyd IF folder ({kind}), not Stable Diffusion: "
      "use configs/if_i_xl.py, if_i_l.py or if_i_m.py"
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
  if unet.get("norm_num_groups", 32) != 32:
    raise SDError(
      f"{path}/unet uses norm_num_groups={unet['norm_num_groups']}; "
      "diffusers' Flax UNet supports 32 only"
    )
  return unet


def schedule_config(path: str) -> tuple[dict, str]:
  """The noise table and native prediction from scheduler_config.json."""
  cfg = read_json(
    os.path.join(path, "scheduler", "scheduler_config.json"), "the scheduler"
  )
  # Where the file is silent: SD's scheduler's defaults.
  table = folders.noise_table(cfg, "scaled_linear", 0.00085, 0.012, False)
  table["ddim_spacing"] = cfg.get("timestep_spacing", "leading")
  table["ddim_steps_offset"] = int(cfg.get("steps_offset", 0))
  return table, cfg.get("prediction_type", "epsilon")


def _weights(folder: str, flax_name: str, pt_name: str):
  """('flax', path) or ('pt', path) of a part's weights."""
  for kind, name in (("flax", flax_name), ("pt", pt_name)):
    p = os.path.join(folder, name)
    if os.path.isfile(p):
      return kind, p
  raise SDError(
    f"{folder} has neither {flax_name} nor {pt_name} (PyTorch .bin files "
    "are pickles and are not read: convert them to safetensors)"
  )


def convert_pt(pt: dict, abstract) -> dict:
  """PyTorch state dict (numpy arrays) -> Flax params shaped like `abstract`.

  Uses diffusers' key renaming and reshaping rules against the abstract
  parameters, and checks that every parameter is found with its shape.
  """
  from diffusers.models import modeling_flax_pytorch_utils as conv  # noqa: PLC0415

  params = weights.Assembly(abstract, SDError)
  for key, tensor in pt.items():
    renamed = tuple(conv.rename_key(key).split("."))
    fkey, ftensor = conv.rename_key_and_reshape_tensor(
      renamed, tensor, params.want
    )
    if fkey in params:  # else e.g. buffers PyTorch saves and Flax does not
      params.put(fkey, ftensor, key)
  return params.tree()


def _read_msgpack(path: str, abstract):
  import flax.serialization  # noqa: PLC0415

  with open(path, "rb") as f:
    raw = f.read()
  try:
    return flax.serialization.from_bytes(abstract, raw)
  except Exception as e:  # noqa: BLE001 - msgpack raises many types
    reason = " ".join(str(e).split())[:200]
    raise SDError(
      f"cannot read {path} (truncated, or not Flax msgpack weights): "
      f"{type(e).__name__}: {reason}"
    ) from None


def load_params(folder: str, abstract, flax_name: str, pt_name: str):
  """Reads a part's weights (Flax msgpack or PyTorch safetensors)."""
  kind, path = _weights(folder, flax_name, pt_name)
  if kind == "flax":
    return _read_msgpack(path, abstract)
  return convert_pt(read_safetensors(path), abstract)


def read_safetensors(path: str) -> dict:
  """A safetensors file as numpy arrays (one-line SDError otherwise)."""
  return folders.read_safetensors(path, SDError)


def _config_kwargs(cls, config: dict) -> dict:
  """A diffusers config.json reduced to the keys `cls` takes."""
  fields = set(getattr(cls, "__dataclass_fields__", {}))
  return {k: v for k, v in config.items() if k in fields}


@functools.cache
def _vae_and_text(path: str):
  """The VAE and text encoder modules with their parameters (cached)."""
  d = diffusers_flax.diffusers()
  from transformers import (  # noqa: PLC0415
    CLIPTextConfig,  # noqa: PLC0415
    CLIPTokenizer,
    FlaxCLIPTextModel,
  )

  vae_cfg = read_json(os.path.join(path, "vae", "config.json"), "the VAE")
  vae = d.FlaxAutoencoderKL(**_config_kwargs(d.FlaxAutoencoderKL, vae_cfg))
  size = int(vae_cfg.get("sample_size", 64))
  x = jax.ShapeDtypeStruct((1, vae.in_channels, size, size), jnp.float32)
  abstract = jax.eval_shape(vae.init, jax.random.key(0), x)["params"]
  vae_params = load_params(
    os.path.join(path, "vae"),
    abstract,
    "diffusion_flax_model.msgpack",
    "diffusion_pytorch_model.safetensors",
  )
  text_cfg = CLIPTextConfig.from_pretrained(os.path.join(path, "text_encoder"))
  text = FlaxCLIPTextModel(text_cfg, _do_init=False)
  ids = jnp.zeros((1, 1), "i4")
  abstract = jax.eval_shape(
    lambda: text.module.init(jax.random.key(0), ids, ids + 1, ids)["params"]
  )
  text_params = _load_clip(os.path.join(path, "text_encoder"), abstract)
  tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"))

  def text_forward(params, ids):
    # Stable Diffusion's pipelines attend to every token (no padding mask).
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return text.module.apply(
      {"params": params}, ids, jnp.ones_like(ids), positions
    )[0]

  def vae_decode(params, z, attention="auto"):
    with diffusers_flax.efficient_attention(attention):
      return vae.apply({"params": params}, z, method=vae.decode).sample

  return dict(
    # Compiled once per folder (and per batch shape), not per call.
    text_forward=jax.jit(text_forward),
    text_apply=text_forward,
    vae_decode=jax.jit(vae_decode, static_argnames="attention"),
    vae=vae,
    vae_params=vae_params,
    scaling_factor=float(vae_cfg.get("scaling_factor", 0.18215)),
    vae_factor=2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1),
    text=text,
    text_params=text_params,
    tokenizer=tokenizer,
  )


def _load_clip(folder: str, abstract, prefix: str = "clip"):
  """transformers CLIP weights (`prefix`: the Flax class's
  `base_model_prefix`): Flax msgpack, or PyTorch safetensors converted."""
  kind, path = _weights(folder, "flax_model.msgpack", "model.safetensors")
  if kind == "flax":
    return _read_msgpack(path, abstract)
  from flax import traverse_util  # noqa: PLC0415
  from transformers import modeling_flax_pytorch_utils as conv  # noqa: PLC0415

  # transformers' converter reads only the keys and shapes of `params`.
  shim = types.SimpleNamespace(base_model_prefix=prefix, params=abstract)
  converted = traverse_util.flatten_dict(
    conv.convert_pytorch_state_dict_to_flax(read_safetensors(path), shim)
  )
  want = traverse_util.flatten_dict(abstract)
  missing = sorted(set(want) - set(converted))
  if missing:
    raise SDError(f"{path} has no weight for {'/'.join(missing[0])}")
  return traverse_util.unflatten_dict(
    {k: np.asarray(converted[k], np.float32) for k in want}
  )
