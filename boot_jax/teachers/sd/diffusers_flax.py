"""diffusers' Flax Stable Diffusion modules, made to compute what PyTorch does.

diffusers removed its Flax classes after 0.39; until the family's own
networks replace them, the UNet, VAE and CLIP text encoder of a Stable
Diffusion folder are diffusers' and transformers' Flax modules, imported
here (quietly: diffusers imports torch when present) with two fixes:

* `match_pytorch`: the GEGLU feed-forward's GELU (tanh approximation in
  Flax, exact in PyTorch) and the transformer block's GroupNorm epsilon
  (1e-5 in Flax, 1e-6 in PyTorch);
* `efficient_attention`: their attention layers run through
  `models.attention` (chunked, cuDNN or Pallas kernels).

diffusers is an optional dependency (the `sd` extra), so it is imported
inside `diffusers()`, never at the top.
"""

from __future__ import annotations

import contextlib
import functools
import types

import flax.linen as nn
import jax

from boot_jax.models import attention as attention_lib


@functools.cache
def diffusers():
  """Imports diffusers' Flax models quietly, with the PyTorch fixes."""
  import diffusers  # noqa: PLC0415 - heavy (imports torch when present)
  from diffusers.models import attention_flax  # noqa: PLC0415

  diffusers.utils.logging.set_verbosity_error()
  match_pytorch(attention_flax)
  return diffusers


def match_pytorch(attention_flax) -> None:
  """Makes diffusers' Flax attention blocks compute what PyTorch computes.

  `attention_flax` reaches flax.linen through its module-level name `nn`
  at call time; it is given a view of flax.linen whose `gelu` is exact
  (PyTorch's GEGLU uses `F.gelu` without approximation) and whose
  `GroupNorm` uses epsilon 1e-6 (PyTorch's Transformer2DModel; the one
  GroupNorm in that module).
  """
  if getattr(attention_flax.nn, "_boot_jax_fixed", False):
    return

  def group_norm(*args, **kwargs):
    kwargs["epsilon"] = 1e-6
    return nn.GroupNorm(*args, **kwargs)

  view = types.SimpleNamespace(**{k: getattr(nn, k) for k in dir(nn)})
  view.gelu = functools.partial(jax.nn.gelu, approximate=False)
  view.GroupNorm = group_norm
  view._boot_jax_fixed = True  # noqa: SLF001
  attention_flax.nn = view


def _unet_attention(
  mod, implementation, hidden, context=None, deterministic=True
):
  """diffusers' `FlaxAttention.__call__` with `attention.attend` inside."""
  context = hidden if context is None else context
  b = hidden.shape[0]
  heads = lambda a: a.reshape(b, -1, mod.heads, mod.dim_head)  # noqa: E731
  out = attention_lib.attend(
    heads(mod.query(hidden)),
    heads(mod.key(context)),
    heads(mod.value(context)),
    scale=mod.dim_head**-0.5,
    implementation=implementation,
  )
  out = mod.proj_attn(out.reshape(b, -1, mod.heads * mod.dim_head))
  return mod.dropout_layer(out, deterministic=deterministic)


def _vae_attention(mod, implementation, hidden):
  """diffusers' VAE `FlaxAttentionBlock.__call__` with `attention.attend`."""
  b, h, w, c = hidden.shape
  heads = c // mod.num_head_channels if mod.num_head_channels else 1
  y = mod.group_norm(hidden).reshape(b, h * w, c)
  split = lambda a: a.reshape(b, h * w, heads, c // heads)  # noqa: E731
  y = attention_lib.attend(
    split(mod.query(y)),
    split(mod.key(y)),
    split(mod.value(y)),
    scale=(c / heads) ** -0.5,
    implementation=implementation,
  )
  y = mod.proj_attn(y.reshape(b, h * w, c))
  return y.reshape(b, h, w, c) + hidden


@contextlib.contextmanager
def efficient_attention(implementation: str = "auto"):
  """Runs diffusers' Flax attention layers (UNet and VAE) through
  `models.attention` while the context is open; `plain` leaves them as
  diffusers wrote them. Parameters are untouched."""
  attention_lib.check(implementation)
  if implementation == "plain":
    yield
    return
  diffusers()
  from diffusers.models import attention_flax, vae_flax  # noqa: PLC0415

  def swap(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      if isinstance(context.module, attention_flax.FlaxAttention):
        return _unet_attention(context.module, implementation, *args, **kwargs)
      if isinstance(context.module, vae_flax.FlaxAttentionBlock):
        return _vae_attention(context.module, implementation, *args, **kwargs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(swap):
    yield
