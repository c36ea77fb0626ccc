"""Stable Diffusion's UNet (SD 1.x, 2.x, SDXL) in Flax, from a diffusers
config.json.

Our own port of what diffusers' PyTorch `UNet2DConditionModel` computes
for the configurations Stable Diffusion folders ship: `DownBlock2D` /
`CrossAttnDownBlock2D` (residual blocks, each followed by a
`Transformer2DModel`, then a stride-2 convolution), `UNetMidBlock2DCrossAttn`,
`UpBlock2D` / `CrossAttnUpBlock2D` (skip connections concatenated, nearest
upsampling and a convolution), transformers with a convolution or a linear
projection, per-level head counts and transformer depths, and SDXL's
micro-conditioning (`addition_embed_type='text_time'`: the pooled text
embedding and the six size/crop numbers added to the time embedding).

It shares the residual block, the timestep features and embedding with
the IF port (`models.unet_blocks`). Layout: NHWC images. Submodules are
named after PyTorch's module paths with each index joined by an
underscore, so weights convert by rule (`models.weights.torch_key`).
Every parameter carries logical axis names (`models.layers`) for FSDP,
attention runs through `models.attention`, and with `remat` each residual
block and each transformer is rematerialised in the backward pass.

`check_config` refuses, in one line naming the key, any option of a
`UNet2DConditionModel` config.json that the port does not implement.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from boot_jax.models import attention as attention_lib
from boot_jax.models import layers
from boot_jax.models import unet_blocks as blocks

DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCK = "UNetMidBlock2DCrossAttn"
# Beyond what both ports fix (`unet_blocks.FIXED`): what Stable Diffusion
# folders leave at diffusers' default and the port does not implement.
FIXED = dict(
  blocks.FIXED,
  time_embedding_act_fn=None,
  encoder_hid_dim=None,
  encoder_hid_dim_type=None,
  num_attention_heads=None,
  only_cross_attention=False,
  mid_block_only_cross_attention=None,
  cross_attention_norm=None,
  resnet_time_scale_shift="default",
  resnet_skip_time_act=False,
  resnet_out_scale_factor=1.0,
  attention_type="default",
  reverse_transformer_layers_per_block=None,
  downsample_padding=1,
  dropout=0.0,
)


class SDConfigError(ValueError):
  """A UNet config.json this port does not implement."""


def per_block(value, n: int, key: str) -> list:
  """A per-level setting: one value for every level, or one per level."""
  if not isinstance(value, (list, tuple)):
    return [value] * n
  if len(value) != n:
    raise SDConfigError(
      f"the UNet's {key} has {len(value)} entries for {n} levels"
    )
  return list(value)


def check_config(cfg: dict) -> None:
  """Refuses, in one line, any key or block type the port does not run."""
  options = (
    ("mid_block_type", (MID_BLOCK,), MID_BLOCK),
    ("addition_embed_type", (None, "text_time"), None),
    ("act_fn", tuple(blocks.ACTIVATIONS), "silu"),
  )
  blocks.check_options(
    cfg, FIXED, options, "Stable Diffusion", SDConfigError,
    block_types=(("down_block_types", DOWN_BLOCKS),
                 ("up_block_types", UP_BLOCKS)),
  )  # fmt: skip
  n = len(cfg.get("block_out_channels") or ())
  if n == 0 or len(cfg.get("down_block_types") or ()) != n:
    raise SDConfigError(
      "the UNet's down_block_types and block_out_channels must name the "
      "same number of levels"
    )
  depth = cfg.get("transformer_layers_per_block", 1)
  if isinstance(depth, (list, tuple)) and any(
    isinstance(d, (list, tuple)) for d in depth
  ):
    raise SDConfigError(
      "the UNet's transformer_layers_per_block has per-layer lists: not "
      "supported by the Stable Diffusion port"
    )


class Attention(nn.Module):
  """diffusers' `Attention` without biases on q, k, v: self-attention, or
  cross-attention when `context` is given."""

  heads: int
  head_dim: int
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, x, context=None):
    b, length, width = x.shape
    inner = self.heads * self.head_dim
    context = x if context is None else context

    def proj(name, y):
      out = nn.Dense(
        inner,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=layers.partitioned(
          nn.initializers.lecun_normal(), ("embed", "heads")
        ),
        name=name,
      )(y)
      return out.reshape(b, -1, self.heads, self.head_dim)

    out = attention_lib.attend(
      proj("to_q", x),
      proj("to_k", context),
      proj("to_v", context),
      scale=self.head_dim**-0.5,
      implementation=self.attention,
    )
    return layers.dense(
      width, ("heads", "embed"), dtype=self.dtype, name="to_out_0"
    )(out.reshape(b, length, inner))


class TransformerBlock(nn.Module):
  """diffusers' `BasicTransformerBlock` (layer norms, self-attention,
  cross-attention to the text, GEGLU feed-forward)."""

  heads: int
  head_dim: int
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, x, context):
    attn = dict(
      heads=self.heads,
      head_dim=self.head_dim,
      attention=self.attention,
      dtype=self.dtype,
    )
    x = x + Attention(**attn, name="attn1")(
      blocks.layer_norm(self.dtype, "norm1")(x)
    )
    x = x + Attention(**attn, name="attn2")(
      blocks.layer_norm(self.dtype, "norm2")(x), context
    )
    return x + FeedForward(self.dtype, name="ff")(
      blocks.layer_norm(self.dtype, "norm3")(x)
    )


class FeedForward(nn.Module):
  """diffusers' `FeedForward` with GEGLU: `net_0/proj` makes the value and
  the gate (exact GELU), `net_2` projects back."""

  dtype: object = None

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = layers.Proj(8 * width, self.dtype, name="net_0")(x)
    value, gate = jnp.split(h, 2, axis=-1)
    h = value * blocks.ACTIVATIONS["gelu"](gate)
    return layers.dense(width, ("mlp", "embed"), dtype=self.dtype,
                        name="net_2")(h)  # fmt: skip


class Transformer2D(nn.Module):
  """diffusers' `Transformer2DModel` on an image: group norm, projection in
  (1x1 convolution, or linear with `linear`), `depth` transformer blocks,
  projection out, plus the input."""

  heads: int
  depth: int
  groups: int
  linear: bool
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, x, context):
    b, hh, ww, c = x.shape
    h = blocks.group_norm(self.groups, 1e-6, self.dtype, "norm")(x)
    if self.linear:
      proj_in = layers.dense(c, ("embed", "mlp"), dtype=self.dtype,
                             name="proj_in")  # fmt: skip
      h = proj_in(h.reshape(b, hh * ww, c))
    else:
      h = layers.conv(c, 1, dtype=self.dtype, name="proj_in")(h)
      h = h.reshape(b, hh * ww, c)
    for i in range(self.depth):
      h = TransformerBlock(
        self.heads, c // self.heads, self.attention, self.dtype,
        name=f"transformer_blocks_{i}",
      )(h, context)  # fmt: skip
    if self.linear:
      h = layers.dense(c, ("mlp", "embed"), dtype=self.dtype,
                       name="proj_out")(h)  # fmt: skip
      h = h.reshape(b, hh, ww, c)
    else:
      h = layers.conv(c, 1, dtype=self.dtype, name="proj_out")(
        h.reshape(b, hh, ww, c)
      )
    return h + x


class Block(nn.Module):
  """One down, mid or up block: resnets, each followed by a transformer in
  the cross-attention kinds, then the resampler (`resample` 'down' or
  'up'). Up blocks take their skip connections in `skips`."""

  kind: str
  features: int
  num_layers: int
  heads: int
  depth: int
  resnet: dict
  transformer: dict
  remat: bool | str = False
  resample: str | None = None

  @nn.compact
  def __call__(self, h, emb, text, skips=None):
    resnet_cls = blocks.ResnetBlock
    attn_cls = Transformer2D
    resnet_cls = layers.rematted(resnet_cls, self.remat)
    attn_cls = layers.rematted(attn_cls, self.remat)

    def attend(i, y):
      return attn_cls(
        self.heads, self.depth, **self.transformer, name=f"attentions_{i}"
      )(y, text)

    def resnet(name, y, **kw):
      return resnet_cls(self.features, **self.resnet, **kw, name=name)(y, emb)

    if self.kind == MID_BLOCK:
      h = resnet("resnets_0", h)
      h = attend(0, h)
      return resnet("resnets_1", h), []
    has_attn = self.kind.startswith("CrossAttn")
    outs = []
    for i in range(self.num_layers):
      if skips is not None:
        h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = resnet(f"resnets_{i}", h)
      if has_attn:
        h = attend(i, h)
      outs.append(h)
    if self.resample == "down":
      h = blocks.Resampler(self.features, False, dtype=self.resnet["dtype"],
                           name="downsamplers_0")(h)  # fmt: skip
      outs.append(h)
    elif self.resample == "up":
      h = blocks.Resampler(self.features, True, dtype=self.resnet["dtype"],
                           name="upsamplers_0")(h)  # fmt: skip
    return h, outs


class SDUNet(nn.Module):
  """Stable Diffusion's UNet: `(x [B, H, W, C], t [B], text [B, L, D]) ->
  [B, H, W, out_channels]` (epsilon or v, as the folder's scheduler says).

  SDXL's UNet (`addition_embed_type='text_time'`) also needs `added`: a
  dict of `text_embeds` (the pooled text embedding, `[B, P]`) and
  `time_ids` (`[B, 6]`: original size, crop corner, target size).
  `extra_embedding` (`[B, 4 * block_out_channels[0]]`) is added to the
  time embedding.
  """

  unet_config: dict
  dtype: object = None
  attention: str = "auto"
  remat: bool | str = False
  guidance_embedding: bool = False

  @nn.compact
  def __call__(
    self,
    x,
    t,
    cond=None,
    train: bool = False,
    guidance=None,
    added=None,
    extra_embedding=None,
  ):
    del train  # deterministic (no dropout): teacher and student alike
    cfg = self.unet_config
    check_config(cfg)
    if cond is None:
      raise ValueError("a Stable Diffusion UNet needs text embeddings")
    dt = self.dtype
    widths = list(cfg["block_out_channels"])
    n = len(widths)
    act = cfg.get("act_fn", "silu")
    lpb = per_block(cfg.get("layers_per_block", 2), n, "layers_per_block")
    # diffusers reads attention_head_dim as the number of heads (its
    # num_attention_heads, which SD folders leave unset).
    heads = per_block(cfg.get("attention_head_dim", 8), n, "attention_head_dim")
    depth = per_block(
      cfg.get("transformer_layers_per_block", 1),
      n,
      "transformer_layers_per_block",
    )
    groups = int(cfg.get("norm_num_groups", 32))
    eps = float(cfg.get("norm_eps", 1e-5))
    resnet = dict(groups=groups, eps=eps, act=act, scale_shift=False, dtype=dt)
    transformer = dict(
      groups=groups,
      linear=bool(cfg.get("use_linear_projection", False)),
      attention=self.attention,
      dtype=dt,
    )
    x = x.astype(dt or jnp.float32)
    text = cond.astype(dt or jnp.float32)

    # Time embedding (+ SDXL's size and text conditioning, + w for a
    # guidance-conditioned student).
    flip = bool(cfg.get("flip_sin_to_cos", True))
    shift = float(cfg.get("freq_shift", 0))
    temb_dim = 4 * widths[0]
    emb = blocks.TimestepEmbedding(temb_dim, act, dt, name="time_embedding")(
      blocks.timestep_features(t, widths[0], flip, shift).astype(x.dtype)
    )
    if cfg.get("addition_embed_type") == "text_time":
      if added is None:
        raise ValueError("an SDXL UNet needs `added`: text_embeds and time_ids")
      ids = jnp.asarray(added["time_ids"])
      dim = int(cfg.get("addition_time_embed_dim", 256))
      time_embeds = blocks.timestep_features(ids.reshape(-1), dim, flip, shift)
      time_embeds = time_embeds.reshape(ids.shape[0], -1)
      pooled = jnp.asarray(added["text_embeds"], time_embeds.dtype)
      emb = emb + blocks.TimestepEmbedding(
        temb_dim, act, dt, name="add_embedding"
      )(jnp.concatenate([pooled, time_embeds], axis=-1).astype(x.dtype))
    emb = layers.add_guidance(emb, guidance, self.guidance_embedding, dt)
    if extra_embedding is not None:  # e.g. a caller's own w embedding
      emb = emb + extra_embedding.astype(emb.dtype)

    h = layers.conv(widths[0], dtype=dt, name="conv_in")(x)
    skips = [h]
    for i, kind in enumerate(cfg["down_block_types"]):
      h, outs = Block(
        kind, widths[i], lpb[i], heads[i], depth[i], resnet, transformer,
        self.remat, "down" if i < n - 1 else None, name=f"down_blocks_{i}",
      )(h, emb, text)  # fmt: skip
      skips += outs
    mid_resnet = dict(
      resnet, out_scale=float(cfg.get("mid_block_scale_factor", 1))
    )
    h, _ = Block(
      MID_BLOCK, widths[-1], 1, heads[-1], depth[-1], mid_resnet,
      transformer, self.remat, name="mid_block",
    )(h, emb, text)  # fmt: skip
    rev = lambda v: v[::-1]  # noqa: E731
    for i, kind in enumerate(cfg["up_block_types"]):
      take = rev(lpb)[i] + 1
      mine, skips = skips[-take:], skips[:-take]
      h, _ = Block(
        kind, rev(widths)[i], take, rev(heads)[i], rev(depth)[i], resnet,
        transformer, self.remat, "up" if i < n - 1 else None,
        name=f"up_blocks_{i}",
      )(h, emb, text, skips=mine)  # fmt: skip
    h = blocks.group_norm(groups, eps, dt, "conv_norm_out")(h)
    out_ch = int(cfg.get("out_channels", 4))
    h = layers.conv(out_ch, dtype=dt, name="conv_out")(
      blocks.ACTIVATIONS[act](h)
    )
    return h.astype(jnp.float32)
