"""Stable Diffusion teachers from a local diffusers folder (latent space).

The folder layout, its checks and weight loading are in `loading`. The
networks are our own: `models.sd_unet`, `models.sd_vae` and
`models.clip_text`. `SDTeacher` is the family: samples are latents,
decoded by the VAE (`pixels`); prompts are encoded by CLIP
(`encode_text`); DDIM steps are spaced as the folder's scheduler says.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.diffusion import predictions
from boot_jax.models import layers, sd_unet
from boot_jax.runtime import paths
from boot_jax.teachers import base
from boot_jax.teachers.sd import export, loading


class SDUNet(nn.Module):
  """The family's network: our Stable Diffusion UNet (`models.sd_unet`)
  under the scope `unet`, NHWC latents in and out.

  `(x [B, h, w, 4], t [B], cond [B, L, D]) -> native output [B, h, w, 4]`.
  A guidance-conditioned student's w embedding (zero at initialisation,
  so it starts as the teacher) is made here and added to the output of
  the UNet's time embedding. (The parameter tree is the one diffusers'
  Flax UNet had, so work directories written with it still load.)

  SDXL's UNet (`micro` set: `(text_length, pooled_width, time_ids)`)
  reads one packed condition: the text embeddings in the first
  `text_length` rows, the pooled text embedding in the rows after them
  (`pack_pooled`), and the micro-conditioning `time_ids` (original size,
  crop corner, target size) of the run, the same for every example.
  """

  unet_config: dict
  guidance_embedding: bool = False
  dtype: object = None
  attention: str = "auto"
  remat: bool | str = False
  micro: tuple | None = None

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False, guidance=None):
    # BOOT runs teacher and student deterministically (no dropout).
    del train
    if cond is None:
      raise ValueError("a Stable Diffusion UNet needs text embeddings")
    extra = None
    if self.guidance_embedding:
      dim = 4 * int(self.unet_config["block_out_channels"][0])
      extra = layers.add_guidance(
        jnp.zeros((x.shape[0], dim), jnp.float32), guidance, True, self.dtype
      )
    added = None
    if self.micro is not None:
      length, width, time_ids = self.micro
      cond, pooled = unpack_pooled(cond, length, width)
      ids = jnp.asarray(time_ids, jnp.float32)
      added = dict(
        text_embeds=pooled,
        time_ids=jnp.broadcast_to(ids, (x.shape[0],) + ids.shape),
      )
    return sd_unet.SDUNet(
      self.unet_config,
      dtype=self.dtype,
      attention=self.attention,
      remat=self.remat,
      name="unet",
    )(x, t, cond, added=added, extra_embedding=extra)


def pack_pooled(text, pooled):
  """SDXL's two conditions as one array: `text [B, L, D]` with the pooled
  embedding `pooled [B, P]` in `ceil(P / D)` rows after it (zero-padded),
  so that every path that moves, caches, shards or guides one text
  embedding carries both. `unpack_pooled` inverts it."""
  batch, _, width = text.shape
  rows = -(-pooled.shape[-1] // width)
  pad = rows * width - pooled.shape[-1]
  extra = jnp.pad(pooled, ((0, 0), (0, pad))).reshape(batch, rows, width)
  return jnp.concatenate([text, extra.astype(text.dtype)], axis=1)


def unpack_pooled(cond, length: int, width: int):
  """`(text [B, length, D], pooled [B, width])` of a packed condition."""
  text = cond[:, :length]
  pooled = cond[:, length:].reshape(cond.shape[0], -1)[:, :width]
  return text, pooled


def unet_params_abstract(module: SDUNet, sample_shape, cond_shape):
  x = jax.ShapeDtypeStruct((1,) + tuple(sample_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  c = jax.ShapeDtypeStruct((1,) + tuple(cond_shape), jnp.float32)
  return jax.eval_shape(module.init, jax.random.key(0), x, t, c)["params"]


# A word longer than this is cut before tokenising (no real prompt has one).
MAX_WORD_CHARS = 1000


def clip_words(text: str, max_tokens: int) -> str:
  """The first `max_tokens + 1` words of `text`, each at most
  `MAX_WORD_CHARS` long.

  CLIP's tokenizer splits text into words first and every word gives at
  least one token, so the tokens kept after truncation to `max_tokens` are
  the same as for the whole text, while a huge prompt (a 100 MB line) is
  never tokenised whole. One word more than needed is kept, so that
  truncation is still detected and reported.
  """
  words = str(text).split(maxsplit=max_tokens + 1)[: max_tokens + 1]
  return " ".join(w[:MAX_WORD_CHARS] for w in words)


def encode_prompts(parts: dict, prompts, max_length: int | None = None):
  """CLIP text embeddings `[len(prompts), L, D]` (last hidden state).

  Prompts longer than the tokenizer's limit are truncated with a warning.
  """
  ids = tokenize(parts, prompts, max_length)
  return parts["text_forward"](parts["text_params"], jnp.asarray(ids))


def tokenize(parts: dict, prompts, max_length: int | None = None):
  """CLIP token ids `[len(prompts), L]` (int32), padded to the limit; for
  a folder with two tokenizers (SDXL: `parts["tokenizers"]`) the first's
  ids then the second's, `[len(prompts), 2L]`.

  Prompts longer than the limit are truncated with a warning.
  """
  toks = parts.get("tokenizers") or (parts["tokenizer"],)
  prompts = list(prompts)
  out = [token_ids(t, prompts, max_length, i == 0) for i, t in enumerate(toks)]
  return np.concatenate(out, axis=1)


def token_ids(tok, prompts, max_length, warn: bool):
  """One tokenizer's ids `[n, length]` (int32): padded to `max_length`
  (None: the tokenizer's), over-long prompts cut to their first tokens
  and the end token, with a warning when `warn` (CLIP and T5 alike)."""
  length = max_length or tok.model_max_length
  prompts = [clip_words(p, length) for p in prompts]
  ids = tok(
    list(prompts), padding="max_length", max_length=length, truncation=False
  ).input_ids
  long = [p for p, i in zip(prompts, ids, strict=True) if len(i) > length]
  if long and warn:
    import warnings  # noqa: PLC0415

    warnings.warn(
      f"{len(long)} prompt(s) longer than {length} tokens were truncated, "
      f"e.g. {long[0][:60]!r}",
      stacklevel=3,
    )
  return np.asarray(
    [i[: length - 1] + i[-1:] if len(i) > length else i for i in ids], np.int32
  )


def decode(parts: dict, latents, attention: str = "auto"):
  """Latents `[B, h, w, 4]` (scaled) -> images `[B, H, W, 3]` in [-1, 1]."""
  z = latents / parts["scaling_factor"] + parts["shift_factor"]
  return parts["vae_decode"](parts["vae_params"], z, attention=attention)


@dataclasses.dataclass(frozen=True, eq=False)
class SDTeacher(base.Teacher):
  """Stable Diffusion: latent samples, CLIP prompts, a VAE to pixels.

  Attributes:
    parts: the VAE, text encoder and tokenizer (`loading._vae_and_text`).
    prompt_loader: `() -> PromptSet` for the configured prompt file, or
      None; called once, on first use of `prompts()`.
    folder: the diffusers folder it was read from.
    attention: the VAE's attention implementation (`models.attention`).
    x0_fn: what its own DDIM does to each clean estimate (None: nothing).
  """

  parts: Any = None
  prompt_loader: Any = None
  folder: str | None = None
  attention: str = "auto"
  x0_fn: Any = None

  @property
  def pixel_shape(self) -> tuple[int, ...]:
    h, w, _ = self.sample_shape
    f = self.parts["vae_factor"]
    return (h * f, w * f, 3)

  def to_pixels(self, samples):
    """Latents -> images in [-1, 1] (the VAE decoder; clipped)."""
    return jnp.clip(decode(self.parts, samples, self.attention), -1.0, 1.0)

  def encode_text(self, texts):
    return encode_prompts(self.parts, [" ".join(t.split()) for t in texts])

  def prompts(self):
    return None if self.prompt_loader is None else self.prompt_loader()

  def tokenize(self, texts):
    return tokenize(self.parts, [" ".join(t.split()) for t in texts])

  @property
  def text_params(self):
    return self.parts["text_params"]

  def encode_tokens(self, text_params, ids):
    """Embeddings of token ids (traceable: the online encoding's step)."""
    return self.parts["text_apply"](text_params, ids)

  def export_extras(self, out_dir: str, student, params) -> list[str]:
    """A diffusers folder of the student beside the jax artifact, with a
    PyTorch one-step function (`sd_export`)."""

    export.export_diffusers(
      self.folder,
      jax.device_get(params),
      student,
      os.path.join(out_dir, "diffusers"),
    )
    return ["diffusers/"]

  def export_readme(self) -> str:
    return export.README


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a Stable Diffusion family reads from its folder, and how.

  Attributes:
    check_folder: `path -> UNet config`; refuses another family's folder.
    parts: `path -> dict` of the VAE, text encoders and tokenizers
      (`loading._vae_and_text`'s keys; SDXL's add `pooled_width` and
      `force_zeros`).
    teacher_cls: the family's teacher class.
    resolution: the default `teacher.resolution`.
    encoders: the text encoders' subfolders (they key the prompt cache).
    micro: `(config, resolution) -> time ids` for a UNet with SDXL's
      micro-conditioning (the condition then packs the pooled embedding,
      `pack_pooled`); None for SD 1.x and 2.x.
    hint: what to say when the folder's prediction type is not the
      config's.
  """

  check_folder: Any
  parts: Any
  teacher_cls: Any
  resolution: int
  encoders: tuple[str, ...] = ("text_encoder",)
  micro: Any = None
  hint: str = ""


def build(
  config, placement=None, dtype=None, attention: str = "auto"
) -> base.Teacher:
  """A Stable Diffusion teacher from `config.path` (a diffusers folder).

  Keys: `path`, `resolution` (pixels; latents are resolution / 8),
  `prediction` (None: the scheduler's `prediction_type`), `prompts` (a
  prompt file, see `boot_jax.prompts`; needed for training),
  `prompt_column`, `prompt_cache` (a directory), `text_encoding`
  (`online` or `cache`, see `boot_jax.prompts`), `negative_prompt` (the
  null condition's text; default the empty prompt), `thresholding` (None:
  the teacher's own DDIM clips or thresholds as the folder's scheduler
  config says; True or False overrides it).

  The prompt file is prepared (or its earlier preparation reused) on the
  first call of the teacher's `prompts()`, so inference never reads it
  unless asked.
  """
  return build_from_folder(config, LAYOUT, placement, dtype, attention)


def build_from_folder(
  config, layout: Layout, placement=None, dtype=None, attention="auto"
) -> base.Teacher:
  """A teacher of a Stable Diffusion family (`layout`) from `config.path`
  (the keys of `build`)."""
  path = config.get("path")
  if path and paths.is_remote(path):
    if not paths.isdir(path):
      raise loading.SDError(f"teacher folder {path!r} does not exist")
    path = paths.local_copy(path)  # read once into the local cache
  unet_cfg = layout.check_folder(path)
  table, native, options = loading.schedule_config(path)
  prediction = predictions.canonical_prediction(native)
  wanted = config.get("prediction")
  if wanted and predictions.canonical_prediction(wanted) != prediction:
    raise loading.SDError(
      f"teacher.prediction={wanted!r} but {path}/scheduler says "
      f"{native!r}: a folder of another model{layout.hint}"
    )
  parts = layout.parts(os.path.abspath(path))
  resolution = int(config.get("resolution") or layout.resolution)
  factor = parts["vae_factor"]
  if resolution % factor:
    raise loading.SDError(
      f"teacher.resolution={resolution} is not divisible by the VAE's "
      f"factor {factor}"
    )
  latent = resolution // factor
  sample_shape = (latent, latent, int(unet_cfg.get("in_channels", 4)))
  length = parts["tokenizer"].model_max_length
  width = int(unet_cfg.get("cross_attention_dim", 768))
  shape, micro = (length, width), None
  if layout.micro is not None:
    pooled = parts["pooled_width"]
    shape = (length + -(-pooled // width), width)
    micro = (length, pooled, layout.micro(config, resolution))
  condition = base.ConditionSpec("text", shape=shape)
  module = SDUNet(unet_cfg, dtype=dtype, attention=attention, micro=micro)
  abstract = unet_params_abstract(module, sample_shape, condition.shape)
  params = loading.load_part(
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
  encode = functools.partial(encode_prompts, parts)
  fields = base.text_teacher_fields(
    config, path, module, params, table, encode, layout.encoders
  )
  if parts.get("force_zeros") and not config.get("negative_prompt"):
    # SDXL's pipeline: zeros for an empty negative prompt.
    fields["null_embedding"] = jnp.zeros(shape, jnp.float32)
  return layout.teacher_cls(
    **fields,
    prediction=prediction,
    sample_shape=sample_shape,
    condition=condition,
    # How this model's pipelines space DDIM steps (for parity with them).
    ddim_spacing=(options["spacing"], options["offset"]),
    # What its DDIM does to each clean latent, as the folder's scheduler
    # config says (SD's folders say clip_sample: false: nothing).
    x0_fn=predictions.x0_processing(options, config.get("thresholding")),
    parts=parts,
    folder=os.path.abspath(path),
    attention=attention,
  )


LAYOUT = Layout(
  check_folder=loading.check_folder,
  parts=loading._vae_and_text,
  teacher_cls=SDTeacher,
  resolution=512,
  hint=" (SD 1.x and 2.x base predict epsilon, SD 2.x at 768 predicts v)",
)
