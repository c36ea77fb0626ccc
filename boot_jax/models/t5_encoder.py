"""T5's encoder in Flax, from a transformers config.json.

Our own port of what transformers' PyTorch `T5EncoderModel` computes (the
text encoder of DeepFloyd IF, and of SD3 and FLUX next): a token
embedding, pre-norm layers of unscaled self-attention with a bucketed
relative-position bias (learned by the first layer, shared by all) and a
feed-forward (`gated-gelu`: GELU-tanh gate times a linear branch, as T5
v1.1; or `relu`), RMS norms without bias, and a final norm.

`T5Encoder(config)(ids, mask)` returns the last hidden state `[B, L, D]`;
`mask` (`[B, L]`, 1 for tokens to attend to) masks padding out as keys.

Submodules are named after PyTorch's module paths
(`encoder/block_0/layer_0/SelfAttention/q`), so weights convert by rule
through `weight_key`. Every parameter carries logical axis names;
attention runs through `models.attention.reference` (the position bias is
added to the scores, which the fused kernels do not take; the sequences
are short: 77 tokens for IF).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.models import attention as attention_lib
from boot_jax.models import layers
from boot_jax.models import unet_blocks as blocks

ACTIVATIONS = {
  "gated-gelu": functools.partial(jax.nn.gelu, approximate=True),  # gelu_new
  "relu": jax.nn.relu,
}


class T5ConfigError(ValueError):
  """A T5 config.json this port does not implement."""


def check_config(cfg: dict) -> None:
  """Refuses, in one line, what the port does not run."""
  options = (("feed_forward_proj", tuple(ACTIVATIONS), "relu"),)
  blocks.check_options(
    cfg, {}, options, "T5", T5ConfigError, part="text encoder"
  )


def weight_key(pt_key: str) -> str:
  """A transformers T5 weight's key as `models.weights.torch_key` reads it:
  embedding tables are `embedding` (not transposed), and the token table,
  tied and saved under either of its names, is `shared`."""
  if pt_key == "encoder.embed_tokens.weight":
    pt_key = "shared.weight"
  if pt_key == "shared.weight" or pt_key.endswith(
    "relative_attention_bias.weight"
  ):
    return pt_key[: -len("weight")] + "embedding"
  return pt_key


def relative_buckets(length: int, num_buckets: int, max_distance: int):
  """T5's bidirectional relative-position buckets `[L, L]` (query, key):
  exact up to a quarter of the buckets, then logarithmic to
  `max_distance`, on the host."""
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  exact = half // 2
  # In float32, as PyTorch computes it, so that truncation agrees.
  ratio = np.maximum(rel, 1).astype(np.float32) / np.float32(exact)
  large = exact + (
    np.log(ratio)
    / np.float32(math.log(max_distance / exact))
    * np.float32(half - exact)
  ).astype(np.int64)
  large = np.minimum(large, half - 1)
  return buckets + np.where(rel < exact, rel, large)


def _dense(features, names, dtype, name):
  return nn.Dense(
    features,
    use_bias=False,
    dtype=dtype,
    kernel_init=layers.partitioned(nn.initializers.lecun_normal(), names),
    name=name,
  )


class _SelfAttention(nn.Module):
  """Unscaled self-attention; the first layer's owns the relative-position
  table and returns the bias it makes for every later layer."""

  heads: int
  head_dim: int
  buckets: int
  has_bias: bool
  dtype: object = None

  @nn.compact
  def __call__(self, x, position_bias, bucket_ids, mask_bias):
    b, length, width = x.shape
    inner = self.heads * self.head_dim
    if self.has_bias:
      table = nn.Embed(
        self.buckets,
        self.heads,
        embedding_init=layers.partitioned(
          nn.initializers.normal(1.0), (None, "heads")
        ),
        name="relative_attention_bias",
      )
      position_bias = jnp.transpose(table(bucket_ids), (2, 0, 1))[None]
      position_bias = position_bias.astype(jnp.float32)

    def split(name):
      y = _dense(inner, ("embed", "heads"), self.dtype, name)(x)
      return y.reshape(b, length, self.heads, self.head_dim)

    q, k, v = split("q"), split("k"), split("v")
    out = attention_lib.reference(
      q, k, v, scale=1.0, bias=position_bias + mask_bias
    )
    out = _dense(width, ("heads", "embed"), self.dtype, "o")(
      out.reshape(b, length, inner)
    )
    return out, position_bias


class _Block(nn.Module):
  """`block_i`: `layer_0` (norm, attention) and `layer_1` (norm, FF)."""

  cfg: dict
  has_bias: bool
  dtype: object = None

  @nn.compact
  def __call__(self, x, position_bias, bucket_ids, mask_bias):
    cfg = self.cfg
    eps = float(cfg.get("layer_norm_epsilon", 1e-6))
    x, position_bias = _AttentionLayer(
      int(cfg["num_heads"]),
      int(cfg["d_kv"]),
      int(cfg.get("relative_attention_num_buckets", 32)),
      self.has_bias,
      eps,
      self.dtype,
      name="layer_0",
    )(x, position_bias, bucket_ids, mask_bias)
    x = _FFLayer(
      int(cfg["d_ff"]),
      cfg.get("feed_forward_proj", "relu"),
      eps,
      self.dtype,
      name="layer_1",
    )(x)
    return x, position_bias


class _AttentionLayer(nn.Module):
  heads: int
  head_dim: int
  buckets: int
  has_bias: bool
  eps: float
  dtype: object = None

  @nn.compact
  def __call__(self, x, *bias_args):
    h = layers.RMSNorm(self.eps, self.dtype, name="layer_norm")(x)
    out, position_bias = _SelfAttention(
      self.heads, self.head_dim, self.buckets, self.has_bias, self.dtype,
      name="SelfAttention",
    )(h, *bias_args)  # fmt: skip
    return x + out, position_bias


class _DenseReluDense(nn.Module):
  ffn: int
  proj: str
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    act = ACTIVATIONS[self.proj]
    if self.proj.startswith("gated-"):
      h = act(_dense(self.ffn, ("embed", "mlp"), self.dtype, "wi_0")(x))
      h = h * _dense(self.ffn, ("embed", "mlp"), self.dtype, "wi_1")(x)
    else:
      h = act(_dense(self.ffn, ("embed", "mlp"), self.dtype, "wi")(x))
    return _dense(x.shape[-1], ("mlp", "embed"), self.dtype, "wo")(h)


class _FFLayer(nn.Module):
  ffn: int
  proj: str
  eps: float
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    h = layers.RMSNorm(self.eps, self.dtype, name="layer_norm")(x)
    return x + _DenseReluDense(
      self.ffn, self.proj, self.dtype, name="DenseReluDense"
    )(h)


class _Stack(nn.Module):
  """`encoder`: the blocks and the final norm."""

  cfg: dict
  remat: bool | str = False
  dtype: object = None

  @nn.compact
  def __call__(self, h, mask):
    cfg = self.cfg
    bucket_ids = jnp.asarray(
      relative_buckets(
        h.shape[1],
        int(cfg.get("relative_attention_num_buckets", 32)),
        int(cfg.get("relative_attention_max_distance", 128)),
      )
    )
    mask_bias = jnp.where(mask[:, None, None, :] > 0, 0.0, -jnp.inf)
    block_cls = layers.rematted(_Block, self.remat)
    position_bias = None
    for i in range(int(cfg["num_layers"])):
      h, position_bias = block_cls(cfg, i == 0, self.dtype, name=f"block_{i}")(
        h, position_bias, bucket_ids, mask_bias
      )
    eps = float(cfg.get("layer_norm_epsilon", 1e-6))
    return layers.RMSNorm(eps, self.dtype, name="final_layer_norm")(h)


class T5Encoder(nn.Module):
  """transformers' `T5EncoderModel`: `(ids [B, L], mask [B, L]) -> [B, L,
  d_model]` (float32)."""

  t5_config: dict
  remat: bool | str = False
  dtype: object = None

  @nn.compact
  def __call__(self, ids, mask=None):
    cfg = self.t5_config
    check_config(cfg)
    ids = jnp.asarray(ids, jnp.int32)
    mask = jnp.ones_like(ids) if mask is None else jnp.asarray(mask)
    h = nn.Embed(
      int(cfg["vocab_size"]),
      int(cfg["d_model"]),
      embedding_init=layers.partitioned(
        nn.initializers.normal(1.0), ("classes", "embed")
      ),
      name="shared",
    )(ids).astype(self.dtype or jnp.float32)
    h = _Stack(cfg, self.remat, self.dtype, name="encoder")(h, mask)
    return h.astype(jnp.float32)
