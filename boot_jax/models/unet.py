"""Our UNet for pixel teachers (NHWC), in the style of DDPM/ADM.

Time embedding, residual blocks with the embedding added after the first
convolution, self-attention only at the resolutions named in
`attention_resolutions`, an optional class embedding with a null class for
classifier-free guidance, and zero-initialised output convolutions. Every
parameter carries logical axis names (see `models.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from boot_jax.models import attention as attention_lib
from boot_jax.models import layers


class ResBlock(nn.Module):
  features: int
  groups: int = 8
  dropout: float = 0.0
  dtype: object = None

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    h = nn.silu(layers.group_norm(self.groups, self.dtype)(x))
    h = layers.conv(self.features, dtype=self.dtype)(h)
    h = (
      h
      + layers.dense(self.features, ("embed", "mlp"), dtype=self.dtype)(
        nn.silu(emb)
      )[:, None, None, :]
    )
    h = nn.silu(layers.group_norm(self.groups, self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = layers.conv(self.features, zero_init=True, dtype=self.dtype)(h)
    if x.shape[-1] != self.features:
      x = layers.conv(self.features, 1, dtype=self.dtype, name="skip")(x)
    return x + h


class SelfAttention(nn.Module):
  """Multi-head self-attention over the spatial positions."""

  num_heads: int = 1
  groups: int = 8
  dtype: object = None
  attention: str = "auto"

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"{c} channels do not split into {self.num_heads} heads")
    y = layers.group_norm(self.groups, self.dtype)(x).reshape(b, h * w, c)
    qkv = layers.dense(3 * c, ("embed", "heads"), dtype=self.dtype)(y)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    split = lambda a: a.reshape(b, h * w, self.num_heads, c // self.num_heads)  # noqa: E731
    y = attention_lib.attend(
      split(q),
      split(k),
      split(v),
      implementation=self.attention,
      plain=jax.nn.dot_product_attention,
    )
    y = y.reshape(b, h * w, c)
    y = layers.dense(c, ("heads", "embed"), zero_init=True, dtype=self.dtype)(y)
    return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
  """`(x [B, H, W, C], t [B], labels [B] | None) -> [B, H, W, C]`.

  Attributes:
    out_channels: output channels (normally the input's).
    channels: base width.
    channel_mult: width multiple per resolution level.
    num_res_blocks: residual blocks per level on the way down.
    attention_resolutions: spatial sizes (e.g. (8,)) that get attention.
    num_heads: attention heads.
    num_classes: > 0 adds a class embedding with a null label.
    dropout: dropout rate inside residual blocks.
    groups: GroupNorm groups.
    time_scale: multiplies times before the sinusoids.
    remat: rematerialise residual blocks in the backward pass (a policy
      of `layers.rematted`).
    guidance_embedding: read a guidance scale `w` through an extra,
      zero-initialised embedding (a guidance-conditioned student).
    dtype: computation dtype (parameters stay float32).
    attention: the attention implementation (`models.attention`); it
      changes memory and speed, not parameters.
  """

  out_channels: int
  channels: int = 64
  channel_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = ()
  num_heads: int = 1
  num_classes: int = 0
  dropout: float = 0.0
  groups: int = 8
  time_scale: float = 1.0
  remat: bool | str = False
  guidance_embedding: bool = False
  dtype: object = None
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, t, labels=None, train: bool = False, guidance=None):
    block_cls = layers.rematted(ResBlock, self.remat, static_argnums=(3,))
    count = iter(range(10**6))

    def res_block(features):
      # Explicit names: nn.remat would otherwise rename the blocks, and the
      # student must read the teacher's parameter tree either way.
      return block_cls(
        features,
        self.groups,
        self.dropout,
        self.dtype,
        name=f"ResBlock_{next(count)}",
      )

    attn = lambda: SelfAttention(  # noqa: E731
      self.num_heads, self.groups, self.dtype, self.attention
    )
    emb_dim = 4 * self.channels
    emb = layers.TimeEmbedding(emb_dim, self.time_scale, self.dtype)(t)
    if self.num_classes:
      if labels is None:
        labels = jnp.full(x.shape[:1], self.num_classes, jnp.int32)
      emb = emb + layers.class_embedding(self.num_classes, emb_dim)(labels)
    emb = layers.add_guidance(
      emb, guidance, self.guidance_embedding, self.dtype
    )

    h = layers.conv(self.channels, dtype=self.dtype)(
      x.astype(self.dtype or x.dtype)
    )
    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = res_block(self.channels * mult)(h, emb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attn()(h)
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = layers.conv(h.shape[-1], strides=2, dtype=self.dtype)(h)
        skips.append(h)

    h = res_block(h.shape[-1])(h, emb, train)
    if h.shape[1] in self.attention_resolutions:
      h = attn()(h)
    h = res_block(h.shape[-1])(h, emb, train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(self.channels * mult)(h, emb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attn()(h)
      if level:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
        h = layers.conv(c, dtype=self.dtype)(h)

    h = nn.silu(layers.group_norm(self.groups, self.dtype)(h))
    out = layers.conv(self.out_channels, zero_init=True, dtype=self.dtype)(h)
    return out.astype(jnp.float32)
