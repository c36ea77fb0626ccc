"""Parts shared by our ports of diffusers' UNets (IF's and Stable
Diffusion's): normalisation with PyTorch's numerics, the positional
timestep features, the residual block and the timestep embedding.

Submodules are named after diffusers' PyTorch module paths, so weights
convert by rule (`models.weights.torch_key`); every parameter carries
logical axis names (`models.layers`).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from boot_jax.models import layers

ACTIVATIONS = {
  "gelu": functools.partial(jax.nn.gelu, approximate=False),  # nn.GELU()
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}
# Keys of a diffusers UNet config.json whose value must be the one given
# here (diffusers' default when the key is absent): neither port runs the
# features they switch on.
FIXED = dict(
  class_embed_type=None,
  num_class_embeds=None,
  time_cond_proj_dim=None,
  timestep_post_act=None,
  center_input_sample=False,
  time_embedding_type="positional",
  time_embedding_dim=None,
  conv_in_kernel=3,
  conv_out_kernel=3,
  dual_cross_attention=False,
  class_embeddings_concat=False,
)


def check_options(
  cfg: dict,
  fixed: dict,
  options,
  port: str,
  error,
  part: str = "UNet",
  block_types=(),
) -> None:
  """Refuses, in one line of `error`, a key of `fixed` set to another value,
  a key of `options` (`(key, allowed values, default)`) outside its
  allowed values, and a block type outside `block_types` (`(key, allowed
  types)`). `port`: the port's name in messages ("IF"); `part`: the
  config's ("UNet", "VAE", "text encoder")."""
  for key, allowed in block_types:
    for kind in cfg.get(key) or ():
      if kind not in allowed:
        raise error(
          f"the {part}'s {key} has {kind!r}: not a {port} {part} (the "
          f"{port} port runs {', '.join(allowed)})"
        )
  for key, want in fixed.items():
    if cfg.get(key, want) != want:
      raise error(
        f"the {part}'s {key}={cfg[key]!r} is not supported by the {port} "
        f"port (expected {want!r})"
      )
  for key, allowed, default in options:
    value = cfg.get(key, default)
    if value not in allowed:
      raise error(
        f"the {part}'s {key}={value!r} is not supported by the {port} port "
        f"(expected one of {allowed})"
      )


def group_norm(groups: int, eps: float, dtype, name: str):
  return nn.GroupNorm(
    num_groups=groups,
    epsilon=eps,
    use_fast_variance=False,
    dtype=dtype,
    scale_init=layers.partitioned(nn.initializers.ones, ("norm",)),
    bias_init=layers.partitioned(nn.initializers.zeros, ("norm",)),
    name=name,
  )


def layer_norm(dtype, name: str, eps: float = 1e-5):
  return nn.LayerNorm(
    epsilon=eps,  # 1e-5: torch.nn.LayerNorm's default
    use_fast_variance=False,
    dtype=dtype,
    scale_init=layers.partitioned(nn.initializers.ones, ("norm",)),
    bias_init=layers.partitioned(nn.initializers.zeros, ("norm",)),
    name=name,
  )


def timestep_features(t, dim: int, flip: bool = True, shift: float = 0.0):
  """diffusers' positional `Timesteps`: `[B] -> [B, dim]` (cos first when
  `flip`), in the default float type."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / (half - shift))
  args = jnp.asarray(t, jnp.result_type(float))[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class ResnetBlock(nn.Module):
  """diffusers' `ResnetBlock2D`: `(x, emb) -> x'`; `resample` 'down' (2x2
  mean) or 'up' (nearest) inside the block, as IF's; `emb` None: no time
  conditioning (a VAE's)."""

  features: int
  groups: int
  eps: float
  act: str
  scale_shift: bool
  skip_time_act: bool = False
  out_scale: float = 1.0
  resample: str | None = None
  dtype: object = None

  @nn.compact
  def __call__(self, x, emb):
    act = ACTIVATIONS[self.act]
    h = act(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
    if self.resample == "down":
      pool = functools.partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))
      x, h = pool(x), pool(h)
    elif self.resample == "up":
      up = lambda a: jnp.repeat(jnp.repeat(a, 2, axis=1), 2, axis=2)  # noqa: E731
      x, h = up(x), up(h)
    h = layers.conv(self.features, dtype=self.dtype, name="conv1")(h)
    norm2 = group_norm(self.groups, self.eps, self.dtype, "norm2")
    if emb is None:  # no time conditioning (a VAE's blocks)
      h = layers.conv(self.features, dtype=self.dtype, name="conv2")(
        act(norm2(h))
      )
      return (self._shortcut(x) + h) / self.out_scale
    e = emb if self.skip_time_act else act(emb)
    width = 2 * self.features if self.scale_shift else self.features
    e = layers.dense(width, ("embed", "mlp"), dtype=self.dtype,
                     name="time_emb_proj")(e)[:, None, None, :]  # fmt: skip
    if self.scale_shift:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = norm2(h) * (1 + scale) + shift
    else:
      h = norm2(h + e)
    h = layers.conv(self.features, dtype=self.dtype, name="conv2")(act(h))
    return (self._shortcut(x) + h) / self.out_scale

  def _shortcut(self, x):
    if x.shape[-1] == self.features:
      return x
    return layers.conv(self.features, 1, dtype=self.dtype,
                       name="conv_shortcut")(x)  # fmt: skip


class Resampler(nn.Module):
  """diffusers' `Downsample2D` (a stride-2 convolution, padded by
  `down_padding`: 1 on each side in UNets, bottom and right only in the
  VAE) or `Upsample2D` (nearest 2x, then a convolution), as `conv`."""

  features: int
  up: bool
  down_padding: tuple = ((1, 1), (1, 1))
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    if self.up:
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      return layers.conv(self.features, dtype=self.dtype, name="conv")(x)
    return layers.conv(
      self.features, strides=2, padding=self.down_padding, dtype=self.dtype,
      name="conv",
    )(x)  # fmt: skip


def TimestepEmbedding(features: int, act: str, dtype=None, name=None):  # noqa: N802
  """diffusers' `TimestepEmbedding`: linear, activation, linear."""
  return layers.MLP(
    features, features, ACTIVATIONS[act], ("linear_1", "linear_2"), dtype,
    name=name,
  )  # fmt: skip
