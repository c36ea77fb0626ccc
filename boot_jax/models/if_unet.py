"""DeepFloyd IF stage I's UNet in Flax, read from a diffusers config.json.

Our own port of what diffusers' PyTorch `UNet2DConditionModel` computes for
IF's configuration (diffusers' Flax UNet cannot run it): residual blocks
that resample themselves (`ResnetDownsampleBlock2D`,
`ResnetUpsampleBlock2D`), attention with added key/value projections of
the text (`SimpleCrossAttn*Block2D`, `UNetMidBlock2DSimpleCrossAttn`), a
linear projection of the T5 states (`encoder_hid_dim_type='text_proj'`),
an attention-pooled text vector added to the time embedding
(`addition_embed_type='text'`), scale-shift time conditioning and a
learned-range output (epsilon, then the variance interpolation).

Layout: NHWC images. Submodules are named after PyTorch's module paths
with the index joined by an underscore (`down_blocks.1.attentions.0.to_q`
is `down_blocks_1/attentions_0/to_q`), so weights convert by rule
(`models.weights.torch_key`). Every parameter carries logical axis names
(`models.layers`) for FSDP.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from boot_jax.models import attention as attention_lib
from boot_jax.models import layers
from boot_jax.models import unet_blocks as blocks
from boot_jax.models.if_config import (  # noqa: F401 - re-exported
  ACTIVATIONS,
  MID_BLOCKS,
  IFConfigError,
  check_config,
  per_block,
)


class AddedKVAttention(nn.Module):
  """Self-attention whose keys and values also hold projected text tokens
  (diffusers' `Attention` with `added_kv_proj_dim` and its added-KV
  processor): text keys come first, then the image's own."""

  head_dim: int
  groups: int
  norm_cross: bool
  only_cross: bool = False
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, x, text):
    b, hh, ww, c = x.shape
    heads = c // self.head_dim
    inner = heads * self.head_dim
    if self.norm_cross:
      text = blocks.group_norm(32, 1e-5, self.dtype, "norm_cross")(text)
    h = blocks.group_norm(self.groups, 1e-5, self.dtype, "group_norm")(x)
    h = h.reshape(b, hh * ww, c)

    def proj(name, y, names=("embed", "heads")):
      out = layers.dense(inner, names, dtype=self.dtype, name=name)(y)
      return out.reshape(b, -1, heads, self.head_dim)

    q = proj("to_q", h)
    k = proj("add_k_proj", text)
    v = proj("add_v_proj", text)
    if not self.only_cross:
      k = jnp.concatenate([k, proj("to_k", h)], axis=1)
      v = jnp.concatenate([v, proj("to_v", h)], axis=1)
    out = attention_lib.attend(
      q, k, v, scale=self.head_dim**-0.5, implementation=self.attention
    )
    out = layers.dense(
      c, ("heads", "embed"), dtype=self.dtype, name="to_out_0"
    )(out.reshape(b, hh * ww, inner))
    return out.reshape(b, hh, ww, c) + x


class AttentionPooling(nn.Module):
  """The text vector IF adds to the time embedding: one query (the mean
  token plus a learned position) attends over itself and every token."""

  heads: int
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    b, _, d = x.shape
    pos = self.param(
      "positional_embedding",
      layers.partitioned(nn.initializers.normal(d**-0.5), (None, "embed")),
      (1, d),
    )
    token = x.mean(axis=1, keepdims=True) + pos.astype(x.dtype)
    seq = jnp.concatenate([token, x], axis=1)
    split = lambda a: a.reshape(b, -1, self.heads, d // self.heads)  # noqa: E731
    dense = functools.partial(
      layers.dense, d, ("embed", "heads"), dtype=self.dtype
    )
    q = split(dense(name="q_proj")(token))
    k = split(dense(name="k_proj")(seq))
    v = split(dense(name="v_proj")(seq))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    weights = jax.nn.softmax(scores * (d // self.heads) ** -0.5, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return out.reshape(b, d)


class Block(nn.Module):
  """One down, mid or up block: resnets (each followed by attention in the
  attention kinds), then the resampling resnet."""

  kind: str
  features: int
  num_layers: int
  head_dim: int
  resnet: dict
  attn: dict
  remat: bool | str = False
  resample: str | None = None

  @nn.compact
  def __call__(self, h, emb, text, skips=None):
    resnet_cls = blocks.ResnetBlock
    resnet_cls = layers.rematted(resnet_cls, self.remat)
    attn_cls = layers.rematted(AddedKVAttention, self.remat)
    has_attn = "CrossAttn" in self.kind
    outs = []

    def attend(i, y):
      return attn_cls(self.head_dim, **self.attn, name=f"attentions_{i}")(
        y, text
      )

    if self.kind in MID_BLOCKS:
      h = resnet_cls(self.features, **self.resnet, name="resnets_0")(h, emb)
      for i in range(self.num_layers):
        h = attend(i, h)
        h = resnet_cls(self.features, **self.resnet, name=f"resnets_{i + 1}")(
          h, emb
        )
      return h, outs
    for i in range(self.num_layers):
      if skips is not None:
        h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = resnet_cls(self.features, **self.resnet, name=f"resnets_{i}")(h, emb)
      if has_attn:
        h = attend(i, h)
      outs.append(h)
    if self.resample:
      name = "downsamplers_0" if self.resample == "down" else "upsamplers_0"
      h = resnet_cls(
        self.features, **self.resnet, resample=self.resample, name=name
      )(h, emb)
      if self.resample == "down":
        outs.append(h)
    return h, outs


class _TextTimeEmbedding(nn.Module):
  """diffusers' `TextTimeEmbedding`: layer norm, attention pooling,
  projection to the time embedding's width, layer norm."""

  features: int
  heads: int
  dtype: object = None

  @nn.compact
  def __call__(self, text):
    h = blocks.layer_norm(self.dtype, "norm1")(text)
    h = AttentionPooling(self.heads, self.dtype, name="pool")(h)
    h = layers.dense(self.features, ("embed", "mlp"), dtype=self.dtype,
                     name="proj")(h)  # fmt: skip
    return blocks.layer_norm(self.dtype, "norm2")(h)


class IFUNet(nn.Module):
  """IF stage I's UNet: `(x [B, H, W, C], t [B], text [B, L, D]) -> eps`.

  `full_output` returns all output channels (epsilon, then the learned
  variance's interpolation); otherwise only the first `in_channels`
  (epsilon), which is what DDIM and BOOT read.
  """

  unet_config: dict
  dtype: object = None
  attention: str = "auto"
  remat: bool | str = False
  guidance_embedding: bool = False
  full_output: bool = False

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False, guidance=None):
    del train  # deterministic (no dropout): teacher and student alike
    cfg = self.unet_config
    check_config(cfg)
    if cond is None:
      raise ValueError("an IF UNet needs text embeddings")
    dt = self.dtype
    widths = list(cfg["block_out_channels"])
    n = len(widths)
    act = cfg.get("act_fn", "silu")
    lpb = per_block(cfg.get("layers_per_block", 2), n)
    head_dims = per_block(cfg.get("attention_head_dim", 8), n)
    only_cross = per_block(cfg.get("only_cross_attention", False), n)
    mid_only = cfg.get("mid_block_only_cross_attention")
    if mid_only is None:  # diffusers: the single flag's value, else False
      flag = cfg.get("only_cross_attention", False)
      mid_only = flag if isinstance(flag, bool) else False
    groups = int(cfg.get("norm_num_groups", 32))
    eps = float(cfg.get("norm_eps", 1e-5))
    resnet = dict(
      groups=groups,
      eps=eps,
      act=act,
      scale_shift=cfg.get("resnet_time_scale_shift") == "scale_shift",
      skip_time_act=bool(cfg.get("resnet_skip_time_act", False)),
      out_scale=float(cfg.get("resnet_out_scale_factor", 1.0)),
      dtype=dt,
    )
    attn = dict(
      groups=groups,
      norm_cross=cfg.get("cross_attention_norm") == "group_norm",
      attention=self.attention,
      dtype=dt,
    )
    x = x.astype(dt or jnp.float32)
    text = cond.astype(dt or jnp.float32)

    # Time embedding (+ the pooled text, + w for a guided student).
    temb_dim = 4 * widths[0]
    emb = blocks.TimestepEmbedding(temb_dim, act, dt, name="time_embedding")(
      blocks.timestep_features(
        t, widths[0], cfg.get("flip_sin_to_cos", True), cfg.get("freq_shift", 0)
      ).astype(x.dtype)
    )
    if cfg.get("addition_embed_type") == "text":
      emb = emb + _TextTimeEmbedding(
        temb_dim,
        int(cfg.get("addition_embed_type_num_heads", 64)),
        dt,
        name="add_embedding",
      )(text)
    emb = layers.add_guidance(emb, guidance, self.guidance_embedding, dt)
    if cfg.get("time_embedding_act_fn"):
      emb = ACTIVATIONS[cfg["time_embedding_act_fn"]](emb)
    hid_type = cfg.get("encoder_hid_dim_type")
    if hid_type is None and cfg.get("encoder_hid_dim") is not None:
      hid_type = "text_proj"  # as diffusers infers it
    if hid_type == "text_proj":
      cross = per_block(cfg.get("cross_attention_dim", 1280), n)[0]
      text = layers.dense(
        cross, ("embed", "mlp"), dtype=dt, name="encoder_hid_proj"
      )(text)

    h = layers.conv(widths[0], dtype=dt, name="conv_in")(x)
    skips = [h]
    for i, kind in enumerate(cfg["down_block_types"]):
      block = Block(
        kind, widths[i], lpb[i], head_dims[i], resnet,
        dict(attn, only_cross=bool(only_cross[i])), self.remat,
        "down" if i < n - 1 else None, name=f"down_blocks_{i}",
      )  # fmt: skip
      h, outs = block(h, emb, text)
      skips += outs
    mid_resnet = dict(
      resnet, out_scale=float(cfg.get("mid_block_scale_factor", 1))
    )
    h, _ = Block(
      cfg.get("mid_block_type"), widths[-1], 1, head_dims[-1], mid_resnet,
      dict(attn, only_cross=bool(mid_only)), self.remat, name="mid_block",
    )(h, emb, text)  # fmt: skip
    rev_widths, rev_lpb = widths[::-1], lpb[::-1]
    rev_only = only_cross[::-1]
    for i, kind in enumerate(cfg["up_block_types"]):
      block = Block(
        kind, rev_widths[i], rev_lpb[i] + 1,
        head_dims[i],  # diffusers does not reverse the head sizes here
        resnet, dict(attn, only_cross=bool(rev_only[i])), self.remat,
        "up" if i < n - 1 else None, name=f"up_blocks_{i}",
      )  # fmt: skip
      take = rev_lpb[i] + 1
      mine, skips = skips[-take:], skips[:-take]
      h, _ = block(h, emb, text, skips=mine)
    h = blocks.group_norm(groups, eps, dt, "conv_norm_out")(h)
    out_ch = int(cfg.get("out_channels", 3))
    h = layers.conv(out_ch, dtype=dt, name="conv_out")(ACTIVATIONS[act](h))
    if not self.full_output:
      h = h[..., : x.shape[-1]]
    return h.astype(jnp.float32)
