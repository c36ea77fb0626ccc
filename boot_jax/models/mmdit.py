"""Stable Diffusion 3's multimodal diffusion transformer (MMDiT) in Flax,
from a diffusers `SD3Transformer2DModel` config.json.

Our own port of what diffusers' PyTorch `SD3Transformer2DModel` computes
(SD 3 Medium, SD 3.5 Medium and Large):

* patches: a `patch_size` convolution with stride `patch_size`, plus fixed
  2-D sine-cosine positions cropped from a `pos_embed_max_size` grid at its
  centre;
* conditioning `c`: sinusoidal features of `1000 t` (256 wide, cosines
  first) through a two-layer MLP, plus the pooled text embedding through
  another (`time_text_embed`); the text tokens go through
  `context_embedder`;
* `num_layers` joint blocks: adaLN-zero modulation of the image and the
  text stream from `c`, one attention over both streams' tokens together
  (RMS-normalised queries and keys with `qk_norm="rms_norm"`), a second,
  image-only attention in `dual_attention_layers` (SD 3.5 Medium), and a
  tanh-GELU feed-forward per stream; the last block updates only the
  image stream (`context_pre_only`);
* out: an adaptive layer norm from `c`, a linear layer, and the patches
  put back together.

Layout: NHWC latents. Submodules are named after PyTorch's module paths
with each index joined by an underscore, so weights convert by rule
(`models.weights.torch_key`); the position table, a buffer in PyTorch, is
computed here (`position_table`) and the loader checks it against the
folder's. Every parameter carries logical axis names (`models.layers`),
attention runs through `models.attention`, and with `remat` each joint
block is rematerialised in the backward pass.

`check_config` refuses, in one line naming the key, any option of a config
the port does not implement.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from boot_jax.models import attention as attention_lib
from boot_jax.models import layers
from boot_jax.models import unet_blocks as blocks

# Keys of an SD3Transformer2DModel config.json and what the port accepts.
_KNOWN = (
  "sample_size",
  "patch_size",
  "in_channels",
  "num_layers",
  "attention_head_dim",
  "num_attention_heads",
  "joint_attention_dim",
  "caption_projection_dim",
  "pooled_projection_dim",
  "out_channels",
  "pos_embed_max_size",
  "dual_attention_layers",
  "qk_norm",
)
QK_NORMS = (None, "rms_norm")
EPS = 1e-6  # every layer norm and RMS norm of the model


class MMDiTConfigError(ValueError):
  """An SD3 transformer config.json this port does not implement."""


def check_config(cfg: dict) -> None:
  """Refuses, in one line, a config the port does not run."""
  for key in cfg:
    if not key.startswith("_") and key not in _KNOWN:
      raise MMDiTConfigError(
        f"the SD3 transformer's config has {key}, which this port does "
        "not implement"
      )
  if cfg.get("qk_norm") not in QK_NORMS:
    raise MMDiTConfigError(
      f"the SD3 transformer's qk_norm={cfg.get('qk_norm')!r} is not "
      f"supported (expected one of {QK_NORMS})"
    )
  if not cfg.get("pos_embed_max_size"):
    raise MMDiTConfigError(
      "the SD3 transformer's pos_embed_max_size must be set (SD3 folders "
      "crop their positions from that grid)"
    )
  width = int(cfg.get("num_attention_heads", 18)) * int(
    cfg.get("attention_head_dim", 64)
  )
  if width % 4:
    raise MMDiTConfigError(
      f"the SD3 transformer's width {width} must be a multiple of 4"
    )


def _sincos(positions, dim: int) -> np.ndarray:
  """1-D sine-cosine features `[M, dim]` (sines first), float64."""
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  out = np.outer(positions, omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def positions(cfg: dict, top: int, left: int, h: int, w: int) -> np.ndarray:
  """Rows `top..top+h` and columns `left..left+w` of the fixed positions of
  diffusers' `PatchEmbed` (`G = pos_embed_max_size` a side), `[h * w,
  width]`: position `(row, col)` holds the features of the column, then
  of the row, both at `index / (G / base)` with `base = sample_size //
  patch_size`. float32, rounded from float64 (diffusers computes in
  float32; the two agree to ~1e-6). Only the block asked for is made."""
  g = int(cfg["pos_embed_max_size"])
  width = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
  base = int(cfg.get("sample_size", 128)) // int(cfg.get("patch_size", 2))
  scale = g / base
  rows = np.arange(top, top + h, dtype=np.float64) / scale
  cols = np.arange(left, left + w, dtype=np.float64) / scale
  half = width // 2
  table = np.concatenate(
    [_sincos(np.tile(cols, h), half), _sincos(np.repeat(rows, w), half)],
    axis=1,
  )
  return table.astype(np.float32)


def position_table(cfg: dict) -> np.ndarray:
  """The whole table `[G * G, width]` (index `row * G + col`)."""
  g = int(cfg["pos_embed_max_size"])
  return positions(cfg, 0, 0, g, g)


def cropped_positions(cfg: dict, h: int, w: int) -> np.ndarray:
  """The centre `h x w` crop of `position_table`, `[h * w, width]`."""
  g = int(cfg["pos_embed_max_size"])
  if h > g or w > g:
    raise MMDiTConfigError(
      f"latents of {h} x {w} patches exceed the transformer's "
      f"pos_embed_max_size {g}"
    )
  return positions(cfg, (g - h) // 2, (g - w) // 2, h, w)


def _layer_norm(x):
  """LayerNorm without scale or bias (eps 1e-6), in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) / jnp.sqrt(var + EPS)).astype(x.dtype)


class Modulation(nn.Module):
  """adaLN: `silu(c)` through a linear layer, split into `parts` vectors
  (diffusers' `AdaLayerNormZero`, `SD35AdaLayerNormZeroX`,
  `AdaLayerNormContinuous`: the module is `norm.../linear`)."""

  parts: int
  dtype: object = None

  @nn.compact
  def __call__(self, c, width: int):
    out = layers.dense(
      self.parts * width, ("embed", "mlp"), dtype=self.dtype, name="linear"
    )(nn.silu(c))
    return jnp.split(out[:, None, :], self.parts, axis=-1)


def _modulate(x, shift, scale):
  return _layer_norm(x) * (1 + scale) + shift


class FeedForward(nn.Module):
  """diffusers' `FeedForward` with tanh-GELU, 4x wide: `net_0/proj`,
  then `net_2`."""

  dtype: object = None

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = layers.Proj(4 * width, self.dtype, name="net_0")(x)
    h = nn.gelu(h, approximate=True)
    return layers.dense(width, ("mlp", "embed"), dtype=self.dtype,
                        name="net_2")(h)  # fmt: skip


class Attention(nn.Module):
  """diffusers' `Attention` with `JointAttnProcessor2_0`: the image
  tokens' q, k, v (`to_q`, ...), and with `context` the text tokens' too
  (`add_q_proj`, ...), attended together; returns the image part through
  `to_out_0` and (unless `context_pre_only`) the text part through
  `to_add_out`. All projections have biases."""

  heads: int
  head_dim: int
  qk_norm: str | None = None
  context_pre_only: bool = False
  attention: str = "auto"
  dtype: object = None

  def _proj(self, name, y):
    out = nn.Dense(
      self.heads * self.head_dim,
      dtype=self.dtype,
      kernel_init=layers.partitioned(
        nn.initializers.lecun_normal(), ("embed", "heads")
      ),
      bias_init=layers.partitioned(nn.initializers.zeros, ("heads",)),
      name=name,
    )(y)
    return out.reshape(y.shape[0], y.shape[1], self.heads, self.head_dim)

  def _qkv(self, y, names, norms):
    q, k, v = (self._proj(n, y) for n in names)
    if self.qk_norm == "rms_norm":
      q = layers.RMSNorm(EPS, self.dtype, name=norms[0])(q)
      k = layers.RMSNorm(EPS, self.dtype, name=norms[1])(k)
    return q, k, v

  @nn.compact
  def __call__(self, x, context=None):
    b, n, width = x.shape
    q, k, v = self._qkv(x, ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"))
    if context is not None:
      cq, ck, cv = self._qkv(
        context,
        ("add_q_proj", "add_k_proj", "add_v_proj"),
        ("norm_added_q", "norm_added_k"),
      )
      q, k, v = (
        jnp.concatenate(p, axis=1) for p in ((q, cq), (k, ck), (v, cv))
      )
    out = attention_lib.attend(
      q, k, v, scale=self.head_dim**-0.5, implementation=self.attention
    )
    out = out.reshape(b, -1, self.heads * self.head_dim)
    image = layers.dense(
      width, ("heads", "embed"), dtype=self.dtype, name="to_out_0"
    )(out[:, :n])
    if context is None:
      return image, None
    if self.context_pre_only:
      return image, None
    text = layers.dense(
      width, ("heads", "embed"), dtype=self.dtype, name="to_add_out"
    )(out[:, n:])
    return image, text


class JointBlock(nn.Module):
  """diffusers' `JointTransformerBlock`: `(x, context, c) -> (x, context)`
  (context None after a `context_pre_only` block)."""

  heads: int
  head_dim: int
  qk_norm: str | None = None
  context_pre_only: bool = False
  dual_attention: bool = False
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, x, context, c):
    width = x.shape[-1]
    dt = self.dtype
    attn = dict(
      heads=self.heads,
      head_dim=self.head_dim,
      qk_norm=self.qk_norm,
      attention=self.attention,
      dtype=dt,
    )
    mod = Modulation(9 if self.dual_attention else 6, dt, name="norm1")(
      c, width
    )
    shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = mod[:6]
    if self.context_pre_only:
      c_scale, c_shift = Modulation(2, dt, name="norm1_context")(c, width)
      context_in = _modulate(context, c_shift, c_scale)
    else:
      c_mod = Modulation(6, dt, name="norm1_context")(c, width)
      context_in = _modulate(context, c_mod[0], c_mod[1])
    normed = _layer_norm(x)
    image, text = Attention(
      **attn, context_pre_only=self.context_pre_only, name="attn"
    )(normed * (1 + scale) + shift, context_in)
    out = x + gate * image
    if self.dual_attention:
      # SD 3.5 Medium: a second, image-only attention on the block's input
      # under its own modulation.
      shift2, scale2, gate2 = mod[6:]
      image2, _ = Attention(**attn, name="attn2")(
        normed * (1 + scale2) + shift2
      )
      out = out + gate2 * image2
    x = out
    x = x + gate_mlp * FeedForward(dt, name="ff")(
      _modulate(x, shift_mlp, scale_mlp)
    )
    if self.context_pre_only:
      return x, None
    _, _, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = c_mod
    context = context + c_gate * text
    context = context + c_gate_mlp * FeedForward(dt, name="ff_context")(
      _modulate(context, c_shift_mlp, c_scale_mlp)
    )
    return x, context


class MMDiT(nn.Module):
  """SD3's transformer: `(x [B, H, W, C], t [B], text [B, L, D], pooled
  [B, P]) -> [B, H, W, out_channels]`, the flow velocity.

  `t` is the flow's time in [0, 1]; the network reads `time_scale * t`
  (1000: diffusers' timesteps). `text` holds the joint text tokens
  (CLIP and T5, `joint_attention_dim` wide), `pooled` the pooled CLIP
  embeddings (`pooled_projection_dim`).
  """

  transformer_config: dict
  time_scale: float = 1000.0
  dtype: object = None
  attention: str = "auto"
  remat: bool | str = False
  guidance_embedding: bool = False

  @nn.compact
  def __call__(self, x, t, text=None, pooled=None, train=False, guidance=None):
    del train  # deterministic: teacher and student alike
    cfg = self.transformer_config
    check_config(cfg)
    if text is None or pooled is None:
      raise ValueError("the SD3 transformer needs text tokens and pooled text")
    dt = self.dtype
    heads = int(cfg.get("num_attention_heads", 18))
    head_dim = int(cfg.get("attention_head_dim", 64))
    width = heads * head_dim
    p = int(cfg.get("patch_size", 2))
    b, height, wide, _ = x.shape
    h, w = height // p, wide // p
    x = x.astype(dt or jnp.float32)

    # Patches and their positions.
    tokens = _PatchEmbed(width, p, dt, name="pos_embed")(x)
    tokens = tokens.reshape(b, h * w, width)
    tokens = tokens + jnp.asarray(cropped_positions(cfg, h, w), tokens.dtype)

    # Conditioning: time and pooled text (+ w for a guided student).
    tt = _TimeTextEmbed(width, dt, name="time_text_embed")(
      jnp.asarray(t, jnp.float32) * self.time_scale, pooled
    )
    c = layers.add_guidance(tt, guidance, self.guidance_embedding, dt)
    context = layers.dense(
      int(cfg.get("caption_projection_dim", width)),
      ("embed", "mlp"),
      dtype=dt,
      name="context_embedder",
    )(text.astype(tokens.dtype))

    n = int(cfg.get("num_layers", 18))
    dual = set(cfg.get("dual_attention_layers") or ())
    block = layers.rematted(JointBlock, self.remat)
    for i in range(n):
      tokens, context = block(
        heads, head_dim, cfg.get("qk_norm"), i == n - 1, i in dual,
        self.attention, dt, name=f"transformer_blocks_{i}",
      )(tokens, context, c)  # fmt: skip

    scale, shift = Modulation(2, dt, name="norm_out")(c, width)
    tokens = _layer_norm(tokens) * (1 + scale) + shift
    out_ch = int(cfg.get("out_channels") or cfg.get("in_channels", 16))
    tokens = layers.dense(
      p * p * out_ch, ("embed", None), dtype=dt, name="proj_out"
    )(tokens)
    out = tokens.reshape(b, h, w, p, p, out_ch).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, h * p, w * p, out_ch).astype(jnp.float32)


class _PatchEmbed(nn.Module):
  """diffusers' `PatchEmbed` convolution (`pos_embed/proj`): one token
  per `patch x patch` patch."""

  width: int
  patch: int
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    return nn.Conv(
      self.width,
      (self.patch, self.patch),
      strides=(self.patch, self.patch),
      padding="VALID",
      dtype=self.dtype,
      kernel_init=layers.partitioned(
        nn.initializers.lecun_normal(),
        ("conv_h", "conv_w", "conv_in", "conv_out"),
      ),
      bias_init=layers.partitioned(nn.initializers.zeros, ("conv_out",)),
      name="proj",
    )(x)


class _TimeTextEmbed(nn.Module):
  """diffusers' `CombinedTimestepTextProjEmbeddings`: 256 sinusoidal
  features of the timestep (cosines first) through `timestep_embedder`,
  plus the pooled text through `text_embedder` (both linear, SiLU,
  linear)."""

  width: int
  dtype: object = None

  @nn.compact
  def __call__(self, timestep, pooled):
    feats = blocks.timestep_features(timestep, 256, flip=True, shift=0.0)
    dt = self.dtype or jnp.float32
    emb = blocks.TimestepEmbedding(
      self.width, "silu", self.dtype, name="timestep_embedder"
    )(feats.astype(dt))
    text = layers.MLP(
      self.width, self.width, nn.silu, ("linear_1", "linear_2"), self.dtype,
      name="text_embedder",
    )(jnp.asarray(pooled).astype(dt))  # fmt: skip
    return emb + text
