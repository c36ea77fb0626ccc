"""A residual MLP for vector data `[B, D]`, time and optional class input."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from boot_jax.models import layers


class Block(nn.Module):
  """Pre-norm residual block; the condition is added before the MLP."""

  width: int
  mlp_ratio: int
  dtype: object = None

  @nn.compact
  def __call__(self, h, cond):
    r = layers.layer_norm(self.dtype)(h)
    r = r + layers.dense(self.width, ("embed", "mlp"), dtype=self.dtype)(cond)
    r = layers.dense(
      self.width * self.mlp_ratio, ("embed", "mlp"), dtype=self.dtype
    )(r)
    r = nn.silu(r)
    r = layers.dense(
      self.width, ("mlp", "embed"), zero_init=True, dtype=self.dtype
    )(r)
    return h + r


class MLP(nn.Module):
  """Residual MLP: `(x [B, D], t [B], labels [B] | None) -> [B, D]`.

  Attributes:
    out_dim: output features (the data dimension).
    width: residual stream width.
    depth: number of residual blocks.
    mlp_ratio: hidden width of each block, as a multiple of `width`.
    num_classes: > 0 adds a class embedding with a null label.
    time_scale: times are multiplied by this before the sinusoids (use
      1000 for continuous times in [0, 1], 1 for DDPM timesteps).
    remat: rematerialise the blocks in the backward pass (a policy of
      `layers.rematted`: True or 'block', 'dots', False or 'none').
    guidance_embedding: read a guidance scale `w` through an extra,
      zero-initialised embedding (a guidance-conditioned student).
    dtype: computation dtype (parameters stay float32).
  """

  out_dim: int
  width: int = 256
  depth: int = 4
  mlp_ratio: int = 2
  num_classes: int = 0
  time_scale: float = 1.0
  remat: bool | str = False
  guidance_embedding: bool = False
  dtype: object = None

  @nn.compact
  def __call__(self, x, t, labels=None, train: bool = False, guidance=None):
    del train
    emb = layers.TimeEmbedding(self.width, self.time_scale, self.dtype)(t)
    if self.num_classes:
      if labels is None:
        labels = jnp.full(x.shape[:1], self.num_classes, jnp.int32)
      emb = emb + layers.class_embedding(self.num_classes, self.width)(labels)
    emb = layers.add_guidance(
      emb, guidance, self.guidance_embedding, self.dtype
    )
    cond = nn.silu(emb)
    h = layers.dense(self.width, ("embed", "mlp"), dtype=self.dtype)(x)
    block = layers.rematted(Block, self.remat)
    for i in range(self.depth):
      # Named explicitly so remat does not rename the parameters.
      h = block(self.width, self.mlp_ratio, self.dtype, name=f"Block_{i}")(
        h, cond
      )
    h = nn.silu(layers.layer_norm(self.dtype)(h))
    out = layers.dense(self.out_dim, ("embed", None), dtype=self.dtype)(h)
    return out.astype(jnp.float32)
