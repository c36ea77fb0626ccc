"""Flax networks, chosen by name from `MODELS`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from boot_jax.models import mlp, unet

MODELS = {
  "mlp": mlp.MLP,
  "unet": unet.UNet,
}


def make_model(
  config, sample_shape, num_classes: int = 0, dtype=None, attention=None
):
  """Builds a network from a `model` config section.

  Args:
    config: section with `name` and the module's own attributes.
    sample_shape: one sample's shape; sets the output width/channels.
    num_classes: > 0 for class-conditional networks.
    dtype: computation dtype (None: float32).
    attention: overrides the section's attention implementation, for
      networks that have attention (None: keep the section's).
  """
  kwargs = dict(config)
  name = kwargs.pop("name")
  try:
    cls = MODELS[name]
  except KeyError:
    raise ValueError(
      f"unknown model {name!r}; expected one of {sorted(MODELS)}"
    ) from None
  if name == "mlp":
    if len(sample_shape) != 1:
      raise ValueError(f"the mlp model takes vectors, not {sample_shape}")
    kwargs["out_dim"] = sample_shape[0]
  else:
    if len(sample_shape) != 3:
      raise ValueError(f"the unet model takes HWC images, not {sample_shape}")
    kwargs["out_channels"] = sample_shape[-1]
    for key in ("channel_mult", "attention_resolutions"):
      if key in kwargs:
        kwargs[key] = tuple(kwargs[key])
  known = set(cls.__dataclass_fields__) - {"parent", "name"}
  unknown = set(kwargs) - known
  if unknown:
    raise ValueError(
      f"unknown {name} model keys {sorted(unknown)}; known: {sorted(known)}"
    )
  if attention is not None and "attention" in known:
    kwargs["attention"] = attention
  return cls(num_classes=num_classes, dtype=dtype, **kwargs)


def _example_inputs(sample_shape):
  x = jnp.zeros((1,) + tuple(sample_shape), jnp.float32)
  return x, jnp.zeros((1,), jnp.float32)


def boxed_abstract_params(module, sample_shape, cond=None):
  """The parameters' ShapeDtypeStructs, still in their logical-axis boxes.

  Nothing is computed; `sharding.logical_specs` reads the names from it.
  """
  x, t = _example_inputs(sample_shape)
  variables = jax.eval_shape(module.init, jax.random.key(0), x, t, cond)
  return variables["params"]


def init_params(module, key, sample_shape, cond=None):
  """Initial parameters (logical-axis boxes removed) for a batch of one.

  Args:
    module: the network.
    key: PRNG key.
    sample_shape: one sample's shape.
    cond: an example condition for a batch of one (None: unconditional).
  """
  x, t = _example_inputs(sample_shape)
  variables = jax.jit(module.init)(key, x, t, cond)
  return nn.meta.unbox(variables["params"])
