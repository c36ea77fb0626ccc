"""Reading a local diffusers Stable Diffusion 3 / 3.5 folder.

The folder is what `StableDiffusion3Pipeline.save_pretrained` writes:

    FOLDER/model_index.json
    FOLDER/transformer/              SD3Transformer2DModel (`models.mmdit`)
    FOLDER/vae/                      AutoencoderKL (16 latent channels,
                                     scaling and shift factors)
    FOLDER/text_encoder/, _2/        CLIPTextModelWithProjection (L, G)
    FOLDER/text_encoder_3/           T5EncoderModel (optional: without it
                                     the pipeline conditions on zeros)
    FOLDER/tokenizer/, _2/, _3/      two CLIP tokenizers and T5's
    FOLDER/scheduler/scheduler_config.json  FlowMatchEulerDiscreteScheduler

Weights are safetensors (one file, shards with an index, or the fp16
variant; never pickles), read one shard at a time onto our own networks
(`models.mmdit`, `models.sd_vae`, `models.clip_text`,
`models.t5_encoder`).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.models import mmdit
from boot_jax.teachers import folders
from boot_jax.teachers.sd import loading as sd_loading
from boot_jax.teachers.sd import sd_teacher

PARTS = (
  "transformer",
  "vae",
  "text_encoder",
  "text_encoder_2",
  "tokenizer",
  "tokenizer_2",
  "scheduler",
)
T5_PARTS = ("text_encoder_3", "tokenizer_3")
TRANSFORMER_CLASS = "SD3Transformer2DModel"
SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"
# FlowMatchEulerDiscreteScheduler options the sampler here does not
# follow, with the values it runs (SD 3 and 3.5 folders keep them).
SCHEDULER_FIXED = dict(
  use_dynamic_shifting=False,
  invert_sigmas=False,
  shift_terminal=None,
  use_karras_sigmas=False,
  use_exponential_sigmas=False,
  use_beta_sigmas=False,
  stochastic_sampling=False,
)
# The T5 tokens of StableDiffusion3Pipeline (its max_sequence_length).
T5_TOKENS = 256

# The largest difference allowed between the folder's position table (a
# buffer diffusers computes in float32) and ours (float64, rounded):
# float32 sines of arguments up to ~base_size radians differ by ~1e-5.
POSITION_TOLERANCE = 1e-4
POSITIONS = "pos_embed.pos_embed"


class SD3Error(folders.FolderError):
  """A Stable Diffusion 3 folder that cannot be read as configured."""


def _not_sd3(kind: str, path: str) -> str | None:
  if kind.startswith("IF"):
    return (
      f"{path} is a DeepFloyd IF folder ({kind}), not Stable Diffusion 3: "
      "use configs/if_i_xl.py, if_i_l.py or if_i_m.py"
    )
  if os.path.isdir(os.path.join(path, "unet")) or (
    kind.startswith("StableDiffusion") and "3" not in kind
  ):
    sign = kind or "a unet/ part"
    return (
      f"{path} is a Stable Diffusion UNet folder ({sign}), not Stable "
      "Diffusion 3: use configs/sd15.py, sd21.py or sdxl.py"
    )
  return None


def check_folder(path: str, t5: bool = True) -> dict:
  """Checks a diffusers SD3 folder; returns the transformer config.

  `t5`: the run conditions on T5 (`teacher.t5`), so its encoder and
  tokenizer must be there.
  """
  folders.check_parts(path, PARTS, "Stable Diffusion 3", SD3Error, _not_sd3)
  if t5:
    missing = [p for p in T5_PARTS if not os.path.isdir(os.path.join(path, p))]
    if missing:
      raise SD3Error(
        f"{path} has no {missing[0]}/ folder (the T5 encoder); set "
        "teacher.t5=false to condition on zeros in its place, as the "
        "pipeline does without it"
      )
  cfg = transformer_config(path)
  kind = cfg.get("_class_name")
  if kind != TRANSFORMER_CLASS:
    raise SD3Error(
      f"{path}/transformer is a {kind or 'model without _class_name'}, not "
      f"an {TRANSFORMER_CLASS}: not a Stable Diffusion 3 folder"
    )
  return cfg


def schedule_config(path: str) -> dict:
  """The rectified flow of the folder's scheduler (a schedule section,
  `diffusion.make_schedule`'s keys): its shift and training steps."""
  cfg = folders.read_json(
    os.path.join(path, "scheduler", "scheduler_config.json"),
    "the scheduler config",
    SD3Error,
  )
  kind = cfg.get("_class_name")
  if kind != SCHEDULER_CLASS:
    raise SD3Error(
      f"{path}/scheduler is a {kind or 'scheduler without _class_name'}, "
      f"not a {SCHEDULER_CLASS}: this family samples the rectified flow "
      "by Euler steps"
    )
  for key, value in SCHEDULER_FIXED.items():
    if key in cfg and cfg[key] != value:
      raise SD3Error(
        f"{path}/scheduler has {key}={cfg[key]!r}: only {value!r} is supported"
      )
  return dict(
    type="continuous",
    name="rectified_flow",
    shift=float(cfg.get("shift", 1.0)),
    num_train_steps=int(cfg.get("num_train_timesteps", 1000)),
  )


@functools.cache
def parts(path: str, t5: bool = True) -> dict:
  """The VAE, the text encoders and tokenizers (cached per folder).

  `text_apply(params, ids)` is `StableDiffusion3Pipeline.encode_prompt`:
  both CLIPs' penultimate hidden states side by side, zero-padded to the
  transformer's text width, then T5's last hidden state (zeros without
  `t5`) after them in the sequence, `[B, 77 + 256, D]`; and both CLIPs'
  projected pooled states side by side `[B, P]`; packed into one array
  (`sd_teacher.pack_pooled`). The ids are the three tokenizers', side by
  side (`[B, 77 + 77 + 256]`; the T5 part unused without `t5`).
  """
  width = int(transformer_config(path)["joint_attention_dim"])
  vae = sd_loading.vae_parts(path)
  one, params_1 = sd_loading.text_encoder(path, "text_encoder", True)
  two, params_2 = sd_loading.text_encoder(path, "text_encoder_2", True)
  tokenizers = [
    sd_loading.tokenizer(path, "tokenizer"),
    sd_loading.tokenizer(path, "tokenizer_2"),
  ]
  clip_len = tokenizers[0].model_max_length
  text_params = dict(text_encoder=params_1, text_encoder_2=params_2)
  t5_module = None
  if t5:
    from transformers import T5TokenizerFast  # noqa: PLC0415

    t5_module, text_params["text_encoder_3"], t5_width = folders.t5_encoder(
      os.path.join(path, "text_encoder_3"), SD3Error
    )
    if t5_width != width:
      raise SD3Error(
        f"{path}: T5's width {t5_width} is not the transformer's "
        f"joint_attention_dim {width}"
      )
    tokenizers.append(
      folders.read_tokenizer(
        T5TokenizerFast,
        os.path.join(path, "tokenizer_3"),
        ("spiece.model",),
        SD3Error,
      )
    )
  clip_width = sum(int(m.text_config["hidden_size"]) for m in (one, two))
  if clip_width > width:
    raise SD3Error(
      f"{path}: the CLIP encoders' widths add up to {clip_width}, more "
      f"than the transformer's joint_attention_dim {width}"
    )

  def text_apply(params, ids):
    ids_1, ids_2 = ids[:, :clip_len], ids[:, clip_len : 2 * clip_len]
    out_1 = one.apply({"params": params["text_encoder"]}, ids_1)
    out_2 = two.apply({"params": params["text_encoder_2"]}, ids_2)
    clip = jnp.concatenate(
      [out_1["hidden_states"][-2], out_2["hidden_states"][-2]], axis=-1
    )
    clip = jnp.pad(clip, ((0, 0), (0, 0), (0, width - clip.shape[-1])))
    if t5_module is None:
      t5_out = jnp.zeros((ids.shape[0], T5_TOKENS, width), clip.dtype)
    else:
      t5_out = t5_module.apply(
        {"params": params["text_encoder_3"]}, ids[:, 2 * clip_len :]
      )
    text = jnp.concatenate([clip, t5_out.astype(clip.dtype)], axis=1)
    pooled = jnp.concatenate(
      [out_1["text_embeds"], out_2["text_embeds"]], axis=-1
    )
    return sd_teacher.pack_pooled(text, pooled)

  return dict(
    vae,
    text_apply=text_apply,
    text_forward=jax.jit(text_apply),
    text_params=text_params,
    tokenizer=tokenizers[0],
    tokenizers=tuple(tokenizers),
    token_lengths=(clip_len, clip_len, T5_TOKENS)[: len(tokenizers)],
    text_length=clip_len + T5_TOKENS,
    text_width=width,
    pooled_width=sum(
      int(m.text_config.get("projection_dim", 512)) for m in (one, two)
    ),
    force_zeros=False,
  )


def transformer_config(path: str) -> dict:
  """The transformer's config.json, checked against what the port runs."""
  cfg = folders.read_json(
    os.path.join(path, "transformer", "config.json"),
    "the SD3 transformer's config",
    SD3Error,
  )
  try:
    mmdit.check_config(cfg)
  except mmdit.MMDiTConfigError as e:
    raise SD3Error(f"{path}: {e}") from None
  return cfg


def _check_positions(files: list[str], cfg: dict) -> None:
  """Refuses a folder whose position table is not the sine-cosine table
  the port computes (`mmdit.positions`), compared a block of rows at a
  time (SD 3.5 Medium's table holds 226M values)."""
  from safetensors import safe_open  # noqa: PLC0415 - the sd extra

  g = int(cfg["pos_embed_max_size"])
  width = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
  for path in files:
    with safe_open(path, framework="numpy") as f:
      if POSITIONS not in f.keys():
        continue
      table = f.get_tensor(POSITIONS)
    if table.size != g * g * width:
      raise SD3Error(
        f"{POSITIONS} in {path} has shape {table.shape}, not the "
        f"{(1, g * g, width)} of its config"
      )
    table = table.reshape(g, g, width)
    diff = 0.0
    for top in range(0, g, 32):
      rows = min(32, g - top)
      ours = mmdit.positions(cfg, top, 0, rows, g).reshape(rows, g, width)
      block = table[top : top + rows].astype(np.float32)
      diff = max(diff, float(np.max(np.abs(block - ours))))
    if diff > POSITION_TOLERANCE:
      raise SD3Error(
        f"{POSITIONS} in {path} differs from the sine-cosine table by "
        f"{diff:.3g}: a trained position table is not supported"
      )


def _rename(key: str) -> str | None:
  return None if key == POSITIONS else key


def transformer_params(path: str, cfg: dict):
  """The transformer's float32 weights from the folder's `transformer/`
  (`cfg`: its checked config), one shard in memory at a time, for our
  MMDiT (`models.mmdit`)."""
  part = os.path.join(path, "transformer")
  files = folders.weight_files(part, "diffusion_pytorch_model", SD3Error)
  _check_positions(files, cfg)
  abstract = abstract_params(mmdit.MMDiT(cfg), cfg)
  return folders.convert_by_rule(
    files, abstract, "SD3 transformer", SD3Error, _rename
  )


def transformer(path: str):
  """`(module, params)`: our MMDiT and its float32 weights."""
  cfg = transformer_config(path)
  return mmdit.MMDiT(cfg), transformer_params(path, cfg)


def abstract_params(module: mmdit.MMDiT, cfg: dict, size: int | None = None):
  """The transformer's parameter shapes (nothing computed)."""

  size = size or int(cfg.get("patch_size", 2)) * 2
  x = jax.ShapeDtypeStruct((1, size, size, int(cfg["in_channels"])), "float32")
  t = jax.ShapeDtypeStruct((1,), "float32")
  text = jax.ShapeDtypeStruct(
    (1, 1, int(cfg["joint_attention_dim"])), "float32"
  )
  pooled = jax.ShapeDtypeStruct(
    (1, int(cfg["pooled_projection_dim"])), "float32"
  )
  variables = jax.eval_shape(module.init, jax.random.key(0), x, t, text, pooled)
  return nn.meta.unbox(variables["params"])
