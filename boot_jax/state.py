"""The train state: step, student parameters, optimizer state, EMA."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `ema_params` is None when EMA is off."""

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None


def create(params, optimizer: optax.GradientTransformation, ema: bool):
  """A fresh state (jit it with out_shardings to build it sharded)."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    ema_params=jax.tree.map(jnp.array, params) if ema else None,
  )


def ema_update(ema, params, decay: float):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
