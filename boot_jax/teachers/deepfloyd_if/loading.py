"""Reading a local diffusers DeepFloyd IF stage I folder.

The folder is what `IFPipeline.save_pretrained` writes:

    FOLDER/model_index.json
    FOLDER/unet/config.json          + diffusion_pytorch_model.safetensors,
                                       or sharded with an index json, or the
                                       fp16 variant of either
    FOLDER/text_encoder/config.json  + model.safetensors (same four forms)
    FOLDER/tokenizer/                (T5: spiece.model)
    FOLDER/scheduler/scheduler_config.json
    (safety_checker/, feature_extractor/, watermarker/: not read)

Weights are read from safetensors only (a `.bin` is a pickle and is
refused), one shard at a time: each shard is converted to float32 Flax
arrays and dropped before the next is read, so a 4.3B-parameter UNet never
exists twice in host memory.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.models import if_unet
from boot_jax.teachers import folders

PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")
UNET_WEIGHTS = "diffusion_pytorch_model"
T5_WEIGHTS = "model"
MAX_TOKENS = 77  # IF's pipeline pads and truncates prompts to 77 tokens


class IFError(folders.FolderError):
  """A DeepFloyd IF folder that cannot be loaded as configured."""


def _not_if(kind: str, path: str) -> str | None:
  sd3 = folders.sd3_reason(kind, path, "DeepFloyd IF")
  if sd3:
    return sd3
  if kind.startswith("StableDiffusion") or os.path.isdir(
    os.path.join(path, "vae")
  ):
    return (
      f"{path} is a Stable Diffusion folder (it has a VAE), not DeepFloyd "
      "IF: use configs/sd15.py, sd21.py or sd21_base.py"
    )
  return None


def read_json(path: str, what: str) -> dict:
  return folders.read_json(path, what, IFError)


def read_safetensors(path: str) -> dict:
  """A safetensors file as numpy arrays (one-line IFError otherwise)."""
  return folders.read_safetensors(path, IFError)


def check_folder(path: str) -> dict:
  """Checks a diffusers IF folder; returns the UNet config."""
  folders.check_parts(path, PARTS, "DeepFloyd IF", IFError, _not_if)
  cfg = read_json(os.path.join(path, "unet", "config.json"), "the UNet")
  if cfg.get("_class_name") != "UNet2DConditionModel":
    raise IFError(
      f"{path}/unet is a {cfg.get('_class_name') or 'model without '}"
      "_class_name, not a UNet2DConditionModel"
    )
  if_unet.check_config(cfg)
  if int(cfg.get("in_channels", 4)) != 3:
    raise IFError(
      f"{path}/unet reads {cfg.get('in_channels')} channels: IF stage I "
      "generates RGB pixels (3 channels)"
    )
  return cfg


def weight_files(folder: str, base: str) -> list[str]:
  """The safetensors files of a part (`folders.weight_files`)."""
  return folders.weight_files(folder, base, IFError)


def convert_unet(files: list[str], abstract) -> dict:
  """PyTorch UNet shards -> Flax params shaped like `abstract` (float32)."""
  return folders.convert_by_rule(files, abstract, "UNet", IFError)


@functools.cache
def t5_parts(path: str) -> dict:
  """The T5 encoder (`models.t5_encoder`), its float32 parameters and IF's
  tokenizer (cached)."""
  from transformers import T5Tokenizer  # noqa: PLC0415

  folder = os.path.join(path, "text_encoder")
  read_json(os.path.join(folder, "config.json"), "the text encoder")
  module, params, width = folders.t5_encoder(folder, IFError)
  tokenizer = folders.read_tokenizer(
    T5Tokenizer, os.path.join(path, "tokenizer"), ("spiece.model",), IFError
  )

  def forward(params, ids):
    # IF attends to the prompt's tokens only (padding masked out).
    mask = (ids != tokenizer.pad_token_id).astype(jnp.int32)
    return module.apply({"params": params}, ids, mask)

  return dict(
    forward=forward,
    forward_jit=jax.jit(forward),
    params=params,
    tokenizer=tokenizer,
    width=width,
  )


def tokenize(tokenizer, prompts, max_length: int = MAX_TOKENS) -> np.ndarray:
  """T5 ids `[n, 77]` as IF's pipeline makes them: lower case, stripped,
  padded and truncated to 77 tokens (the end token kept)."""
  texts = [str(p).lower().strip() for p in prompts]
  ids = tokenizer(
    texts,
    padding="max_length",
    max_length=max_length,
    truncation=True,
    add_special_tokens=True,
  ).input_ids
  return np.asarray(ids, np.int32)


def schedule_config(path: str) -> tuple[dict, dict]:
  """The noise table and the sampler's x0 processing from the folder's
  scheduler_config.json, as diffusers' `DDIMScheduler.from_config` reads
  it (its `set_alpha_to_one` defaults to True)."""
  cfg = read_json(
    os.path.join(path, "scheduler", "scheduler_config.json"), "the scheduler"
  )
  prediction = cfg.get("prediction_type", "epsilon")
  if prediction != "epsilon":
    raise IFError(
      f"{path}/scheduler predicts {prediction!r}: IF stage I predicts epsilon"
    )
  # Where the file is silent: IF's scheduler's defaults.
  table = folders.noise_table(cfg, "squaredcos_cap_v2", 0.0001, 0.02, True)
  return table, folders.ddim_options(cfg)
