"""Reading the folders diffusers pipelines save: what every family shares.

A pipeline folder (`save_pretrained`) holds `model_index.json` (the
pipeline's class) and one subfolder per part, each with a `config.json`
and its weights. Families check their folder with `check_parts` and read
configs and weights with `read_json` and `read_safetensors`; every failure
is one line, raised as the family's own error class (a `FolderError`).
Weights are read from safetensors only, never from pickles.
"""

from __future__ import annotations

import json
import os

from boot_jax.models import weights


class FolderError(ValueError):
  """A pipeline folder that cannot be read as configured."""


def read_json(path: str, what: str, error=FolderError) -> dict:
  """A JSON file; `error` names `what` is missing, or why it is unreadable."""
  if not os.path.isfile(path):
    raise error(f"{what}: {path} is missing")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise error(f"cannot read {path}: {e}") from None


def read_safetensors(path: str, error=FolderError) -> dict:
  """A safetensors file as numpy arrays; one line of `error` when it is
  truncated, has a bad header, or is not safetensors at all."""
  from safetensors.numpy import load_file  # noqa: PLC0415 - the sd extra

  try:
    return load_file(path)
  except Exception as e:  # noqa: BLE001 - SafetensorError is not exported
    reason = " ".join(str(e).split())[:200]
    raise error(
      f"cannot read {path} (truncated, or not a safetensors file): {reason}"
    ) from None


def read_tokenizer(cls, folder: str, files: tuple, error=FolderError):
  """`cls.from_pretrained(folder)` (a transformers tokenizer class), one
  line of `error` when the folder lacks `files` (and a `tokenizer.json`
  that would stand for them) or the library cannot read what is there."""
  if not os.path.isdir(folder):
    raise error(f"the tokenizer folder {folder} is missing")
  missing = [n for n in files if not os.path.isfile(os.path.join(folder, n))]
  if missing and not os.path.isfile(os.path.join(folder, "tokenizer.json")):
    raise error(
      f"the tokenizer folder {folder} lacks {', '.join(missing)} (or a "
      "tokenizer.json)"
    )
  try:
    return cls.from_pretrained(folder)
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise error(
      f"cannot read the tokenizer in {folder}: {' '.join(str(e).split())[:200]}"
    ) from None


def check_parts(
  path: str, parts, family: str, error=FolderError, other=None
) -> str:
  """Checks that `path` is a folder holding every part of a `family`
  pipeline; returns its `model_index.json` class name ('' without one).

  Args:
    path: the folder (teacher.path).
    parts: the subfolders the family reads.
    family: its name in messages ("Stable Diffusion").
    error: the family's error class.
    other: `(class_name, path) -> reason or None`: refuses another family's
      folder before its missing parts are named.
  """
  if not path:
    raise error(f"teacher.path must name a diffusers {family} folder")
  if not os.path.isdir(path):
    raise error(f"teacher folder {path!r} does not exist")
  kind = ""
  index = os.path.join(path, "model_index.json")
  if os.path.isfile(index):
    kind = str(read_json(index, "the pipeline", error).get("_class_name", ""))
  reason = other(kind, path) if other is not None else None
  if reason:
    raise error(reason)
  missing = [p for p in parts if not os.path.isdir(os.path.join(path, p))]
  if missing:
    raise error(
      f"{path} has no {missing[0]}/ folder: not a complete {family} "
      f"folder (needs {', '.join(p + '/' for p in parts)})"
    )
  return kind


def t5_encoder(folder: str, error=FolderError):
  """A transformers T5 encoder folder (config.json, safetensors) on our
  `models.t5_encoder`: `(module, float32 params, d_model)`."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from transformers import T5Config  # noqa: PLC0415

  from boot_jax.models import t5_encoder as t5  # noqa: PLC0415

  read_json(os.path.join(folder, "config.json"), "the T5 encoder", error)
  config = T5Config.from_pretrained(folder)
  if config.model_type != "t5":
    raise error(f"{folder} holds a {config.model_type} model, not T5")
  try:
    module = t5.T5Encoder(config.to_dict())
    ids = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(
      lambda: module.init(jax.random.key(0), ids, ids + 1)["params"]
    )
  except t5.T5ConfigError as e:
    raise error(f"{folder}: {e}") from None
  params = convert_by_rule(
    weight_files(folder, "model", error),
    nn.meta.unbox(abstract),
    "T5",
    error,
    rename=t5.weight_key,
  )
  return module, params, int(config.d_model)


def sd3_reason(kind: str, path: str, family: str) -> str | None:
  """Why a Stable Diffusion 3 folder (its pipeline class, or a
  `transformer/` part) is not one of `family`'s; None for other folders."""
  if "StableDiffusion3" in kind or os.path.isdir(
    os.path.join(path, "transformer")
  ):
    sign = kind or "a transformer/ part"
    return (
      f"{path} is a Stable Diffusion 3 folder ({sign}), not {family}: use "
      "configs/sd35_medium.py or configs/sd35_large.py"
    )
  return None


def weight_files(folder: str, base: str, error=FolderError) -> list[str]:
  """The safetensors files of a part: one file or the shards named by an
  index json, full precision first, else the fp16 variant."""
  forms = (
    (f"{base}.safetensors", None),
    (f"{base}.safetensors.index.json", "index"),
    (f"{base}.fp16.safetensors", None),
    (f"{base}.safetensors.index.fp16.json", "index"),
  )
  for name, kind in forms:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      continue
    if kind is None:
      return [path]
    try:
      with open(path, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as e:
      raise error(f"cannot read the shard index {path}: {e}") from None
    files = [os.path.join(folder, s) for s in shards]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
      raise error(f"{path} names {absent[0]}, which is missing")
    return files
  bins = [f for f in os.listdir(folder) if f.endswith(".bin")]
  hint = (
    f" (it has {bins[0]}: PyTorch .bin files are pickles and are not "
    "read; save the weights as safetensors)"
    if bins
    else ""
  )
  raise error(f"{folder} has no {base}.safetensors weights{hint}")


def convert_by_rule(
  files: list[str], abstract, what: str, error=FolderError, rename=None
):
  """PyTorch safetensors shards -> Flax params shaped like `abstract`
  (float32), each key renamed by `models.weights.torch_key` (our ports
  name their submodules after PyTorch's paths), after `rename` (a PyTorch
  key -> the key the port expects, e.g. older names, or None for a buffer
  to skip); one shard in memory at a time. `what`: the part's name in
  messages ("UNet")."""
  params = weights.Assembly(abstract, error)
  for path in files:
    shard = read_safetensors(path, error)
    for key in list(shard):
      tensor = shard.pop(key)
      name = rename(key) if rename else key
      if name is None:  # a buffer the port does not keep
        continue
      fkey, how = weights.torch_key(name, tensor.ndim)
      if fkey not in params:
        raise error(
          f"{os.path.basename(path)} holds {key}, which the {what} config "
          "does not have: weights of another model"
        )
      params.put(fkey, weights.to_flax(tensor, how), key)
    del shard
  return params.tree(f"the {what} weights")


def noise_table(
  cfg: dict,
  beta_schedule: str,
  beta_start: float,
  beta_end: float,
  set_alpha_to_one: bool,
) -> dict:
  """The discrete noise table (diffusion/schedules.py's keys) that
  diffusers' DDPM/DDIM schedulers build from a scheduler_config.json `cfg`.

  The other arguments are what the family's scheduler defaults to where
  the file is silent; the number of training steps defaults to 1,000.
  """
  return dict(
    type="discrete",
    beta_schedule=cfg.get("beta_schedule", beta_schedule),
    num_train_steps=int(cfg.get("num_train_timesteps", 1000)),
    beta_start=float(cfg.get("beta_start", beta_start)),
    beta_end=float(cfg.get("beta_end", beta_end)),
    set_alpha_to_one=bool(cfg.get("set_alpha_to_one", set_alpha_to_one)),
    name="",
  )


def ddim_options(cfg: dict, clip_sample: bool = True) -> dict:
  """How a folder's scheduler config asks DDIM to run, read as diffusers'
  `DDIMScheduler.from_config` reads it: step spacing and offset, and what
  is done to each clean estimate (`diffusion.predictions.x0_processing`).
  `clip_sample` stands where the file is silent (DDIMScheduler's own
  default is True)."""
  return dict(
    spacing=cfg.get("timestep_spacing", "leading"),
    offset=int(cfg.get("steps_offset", 0)),
    thresholding=bool(cfg.get("thresholding", False)),
    clip_sample=bool(cfg.get("clip_sample", clip_sample)),
    clip_range=float(cfg.get("clip_sample_range", 1.0)),
    ratio=float(cfg.get("dynamic_thresholding_ratio", 0.995)),
    max_value=float(cfg.get("sample_max_value", 1.0)),
  )
