"""Attention with bounded memory, one implementation per backend.

`attend(q, k, v, implementation=...)` computes softmax(q k^T * scale) v for
`q [B, Tq, H, D]`, `k, v [B, Tk, H, D]`. The config key `model.attention`
picks the implementation:

* `plain`: the network's own code (the score matrix `[B, H, Tq, Tk]` is
  materialised whole); the reference the others are checked against.
* `chunked`: queries in blocks under `jax.checkpoint` inside `lax.map`, so
  only one block's scores `[B, H, block, Tk]` exist at a time, forward and
  backward; any backend.
* `cudnn`: cuDNN's fused flash attention (`jax.nn.dot_product_attention`);
  GPU only, bf16/fp16 inputs, head size a multiple of 8 up to 128.
* `pallas`: the Pallas flash-attention kernel for TPU; sequence lengths
  multiples of 128.
* `auto` (default): `cudnn` on GPU and `pallas` on TPU where their shape
  and dtype limits allow, `chunked` everywhere else.

Scores and softmax are computed in float32 by `chunked` whatever the input
dtype; the result has the dtype of `q`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from boot_jax.config import defaults

IMPLEMENTATIONS = defaults.ATTENTION_IMPLEMENTATIONS

# `chunked` keeps at most this many float32 scores (128 MiB) at a time,
# over all batch rows and heads: a query block is
# `CHUNK_SCORES // (B * H * Tk)` rows (at least MIN_BLOCK).
CHUNK_SCORES = 1 << 25
MIN_BLOCK = 16
PALLAS_BLOCK = 128


class AttentionError(ValueError):
  """An attention implementation that cannot run here."""


def check(implementation: str, platform: str | None = None) -> None:
  """Refuses unknown names, and backend-bound ones on another backend.

  `platform='any'` checks the name only.
  """
  if implementation not in IMPLEMENTATIONS:
    raise AttentionError(
      f"model.attention={implementation!r}: expected one of {IMPLEMENTATIONS}"
    )
  if platform == "any":
    return
  platform = platform or jax.default_backend()
  need = {"cudnn": "gpu", "pallas": "tpu"}.get(implementation)
  if need and platform != need:
    raise AttentionError(
      f"model.attention={implementation!r} runs on {need.upper()} only, "
      f"not {platform}; use auto or chunked"
    )


def resolve(implementation: str, q, k, platform: str | None = None) -> str:
  """The implementation `auto` stands for on this backend and shape."""
  if implementation != "auto":
    return implementation
  platform = platform or jax.default_backend()
  d = q.shape[-1]
  if (
    platform == "gpu"
    and q.dtype in (jnp.bfloat16, jnp.float16)
    and d % 8 == 0
    and d <= 128
  ):
    return "cudnn"
  if (
    platform == "tpu"
    and q.shape[1] % PALLAS_BLOCK == 0
    and k.shape[1] % PALLAS_BLOCK == 0
  ):
    return "pallas"
  return "chunked"


def reference(q, k, v, scale=None, mask=None, bias=None):
  """Softmax attention with the full score matrix, float32 scores; for
  text encoders, `mask` (broadcast to `[B, H, Tq, Tk]`, True where a query
  sees a key) and an additive score `bias` (T5's relative positions)."""
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  s = s * scale
  if bias is not None:
    s = s + bias
  if mask is not None:
    s = jnp.where(mask, s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  out = jnp.einsum(
    "bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32
  )
  return out.astype(q.dtype)


def chunked(q, k, v, scale=None, block: int | None = None):
  """`reference` over blocks of queries, one block's scores at a time.

  Each block runs under `jax.checkpoint`: the backward pass keeps only the
  inputs and recomputes one block's scores at a time, never all of them.
  """
  b, tq, h, d = q.shape
  if block is None:
    # A symbolic batch (an exported function) counts as one example.
    rows = b if isinstance(b, int) else 1
    block = max(MIN_BLOCK, CHUNK_SCORES // max(rows * h * k.shape[1], 1))
  one = jax.checkpoint(functools.partial(reference, scale=scale))
  if tq <= block:
    return one(q, k, v)
  n = -(-tq // block)
  q = jnp.pad(q, ((0, 0), (0, n * block - tq), (0, 0), (0, 0)))
  blocks = jnp.moveaxis(q.reshape(b, n, block, h, d), 1, 0)
  out = jax.lax.map(lambda qb: one(qb, k, v), blocks)
  return jnp.moveaxis(out, 0, 1).reshape(b, n * block, h, d)[:, :tq]


def _cudnn(q, k, v, scale):
  return jax.nn.dot_product_attention(
    q, k, v, scale=scale, implementation="cudnn"
  )


def _pallas(q, k, v, scale):
  from jax.experimental.pallas.ops.tpu import flash_attention  # noqa: PLC0415

  scale = q.shape[-1] ** -0.5 if scale is None else scale
  t = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731  [B, T, H, D] <-> [B, H, T, D]
  out = flash_attention.flash_attention(t(q), t(k), t(v), sm_scale=scale)
  return t(out).astype(q.dtype)


def attend(q, k, v, *, scale=None, implementation: str = "auto", plain=None):
  """Multi-head attention `[B, Tq, H, D] x [B, Tk, H, D] -> [B, Tq, H, D]`.

  Args:
    q: queries.
    k: keys.
    v: values.
    scale: the score scale (None: `D ** -0.5`).
    implementation: one of IMPLEMENTATIONS (see the module doc).
    plain: the caller's own implementation `(q, k, v) -> out` used for
      `plain` (None: `reference`).
  """
  check(implementation)
  impl = resolve(implementation, q, k)
  if impl == "plain":
    return (plain or functools.partial(reference, scale=scale))(q, k, v)
  if impl == "cudnn":
    return _cudnn(q, k, v, scale)
  if impl == "pallas":
    return _pallas(q, k, v, scale)
  return chunked(q, k, v, scale)
