"""Shared building blocks with logical axis names on every parameter.

Logical names used across our models (the sharding rules map them onto mesh
axes):

* 'embed': a model-width input dimension (FSDP shards it).
* 'mlp': a hidden width produced by a dense layer (tensor parallel).
* 'heads': the fused query/key/value features of attention.
* 'conv_in', 'conv_out': convolution channels; 'conv_h', 'conv_w': taps.
* 'classes': rows of a class-embedding table.
* 'norm': scales and biases of normalisation layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

partitioned = nn.with_logical_partitioning

# What each rematerialisation policy keeps of a block for the backward
# pass: nothing but its inputs ('block'), or its dense layers' outputs too
# ('dots': matrix products without batch dimensions; attention scores,
# convolutions and elementwise work are recomputed).
_REMAT_SAVED = {
  "block": None,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(policy) -> str:
  """'none', 'block' or 'dots' for a policy or a switch (True: 'block';
  False or None: 'none')."""
  if policy is True:
    return "block"
  if policy in (None, False, "none"):
    return "none"
  if policy not in _REMAT_SAVED:
    raise ValueError(f"remat policy {policy!r}: expected none, block or dots")
  return policy


def rematted(cls, policy, **kwargs):
  """`cls`, rematerialised by `policy` (`remat_policy`): 'none' leaves it
  as it is, 'block' and 'dots' wrap it in `nn.remat` (`kwargs`, e.g.
  static_argnums, go to it)."""
  policy = remat_policy(policy)
  if policy == "none":
    return cls
  return nn.remat(cls, policy=_REMAT_SAVED[policy], **kwargs)


def dense(
  features: int,
  names: Sequence[str | None],
  *,
  zero_init: bool = False,
  dtype=None,
  name: str | None = None,
) -> nn.Dense:
  """A Dense layer whose kernel and bias carry logical axis names."""
  init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(
    features,
    dtype=dtype,
    kernel_init=partitioned(init, tuple(names)),
    bias_init=partitioned(nn.initializers.zeros, (names[-1],)),
    name=name,
  )


def conv(
  features: int,
  kernel: int = 3,
  *,
  strides: int = 1,
  padding="SAME",
  zero_init: bool = False,
  dtype=None,
  name: str | None = None,
) -> nn.Conv:
  """An NHWC convolution with named kernel axes (`padding` as `nn.Conv`'s:
  'SAME' by default; PyTorch's symmetric padding p is ((p, p), (p, p)))."""
  init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(strides, strides),
    padding=padding,
    dtype=dtype,
    kernel_init=partitioned(init, ("conv_h", "conv_w", "conv_in", "conv_out")),
    bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
    name=name,
  )


def group_norm(groups: int, dtype=None, name: str | None = None):
  return nn.GroupNorm(
    num_groups=groups,
    dtype=dtype,
    scale_init=partitioned(nn.initializers.ones, ("norm",)),
    bias_init=partitioned(nn.initializers.zeros, ("norm",)),
    name=name,
  )


def layer_norm(dtype=None, name: str | None = None):
  return nn.LayerNorm(
    dtype=dtype,
    scale_init=partitioned(nn.initializers.ones, ("norm",)),
    bias_init=partitioned(nn.initializers.zeros, ("norm",)),
    name=name,
  )


def class_embedding(num_classes: int, features: int, name: str | None = None):
  """A table with one extra row: the null label `num_classes` (for CFG)."""
  return nn.Embed(
    num_classes + 1,
    features,
    embedding_init=partitioned(
      nn.initializers.normal(stddev=1.0), ("classes", "embed")
    ),
    name=name,
  )


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """Sinusoidal features of (float) times `[B] -> [B, dim]`."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimeEmbedding(nn.Module):
  """Sinusoidal features, then a two-layer MLP."""

  features: int
  time_scale: float = 1.0
  dtype: object = None

  @nn.compact
  def __call__(self, t):
    emb = timestep_embedding(t * self.time_scale, self.features)
    emb = dense(self.features, ("embed", "mlp"), dtype=self.dtype)(emb)
    emb = nn.silu(emb)
    return dense(self.features, ("mlp", "embed"), dtype=self.dtype)(emb)


class GuidanceEmbedding(nn.Module):
  """Features of the guidance scale `w [B]`, added to the time embedding.

  The output layer starts at zero, so a network that gains this embedding
  computes exactly its old function until training moves it (a student
  built from a teacher starts as the teacher).
  """

  features: int
  scale: float = 100.0  # w in [0, ~10] spans the sinusoids like timesteps
  dtype: object = None

  @nn.compact
  def __call__(self, w):
    emb = timestep_embedding(w * self.scale, self.features)
    emb = dense(self.features, ("embed", "mlp"), dtype=self.dtype)(emb)
    emb = nn.silu(emb)
    return dense(
      self.features, ("mlp", "embed"), zero_init=True, dtype=self.dtype
    )(emb)


def add_guidance(emb, guidance, enabled: bool, dtype=None):
  """`emb + GuidanceEmbedding(w)` when `enabled` (w defaults to 0)."""
  if not enabled:
    return emb
  w = jnp.zeros(emb.shape[:1]) if guidance is None else guidance
  w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), emb.shape[:1])
  return emb + GuidanceEmbedding(
    emb.shape[-1], dtype=dtype, name="GuidanceEmbedding_0"
  )(w)


class MLP(nn.Module):
  """Dense, activation, dense (`names`: the two layers'), as the ports'
  time embeddings and transformer feed-forwards name them; `out` None:
  the input's width."""

  hidden: int
  out: int | None
  act: Callable
  names: tuple[str, str] = ("fc1", "fc2")
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype,
              name=self.names[0])(x)  # fmt: skip
    out = self.out or x.shape[-1]
    return dense(out, ("mlp", "embed"), dtype=self.dtype,
                 name=self.names[1])(self.act(h))  # fmt: skip


class Proj(nn.Module):
  """A dense layer one level down, `<name>/proj`, as PyTorch nests the
  input projection of diffusers' feed-forwards (`net_0/proj`)."""

  features: int
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    return dense(self.features, ("embed", "mlp"), dtype=self.dtype,
                 name="proj")(x)  # fmt: skip


class RMSNorm(nn.Module):
  """RMS normalisation with a learnt `scale` (T5's layer norm, diffusers'
  `RMSNorm`): the mean square in float32, the result in the computation
  dtype (float32 when None)."""

  eps: float
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    scale = self.param(
      "scale", partitioned(nn.initializers.ones, ("norm",)), (x.shape[-1],)
    )
    x32 = x.astype(jnp.float32)
    ms = jnp.mean(x32**2, axis=-1, keepdims=True)
    x32 = x32 * jax.lax.rsqrt(ms + self.eps)
    return (scale * x32).astype(self.dtype or jnp.float32)
