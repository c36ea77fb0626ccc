"""The train state: step, parameters, optimizer state, EMA, and guards."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

NAN_POLICIES = ("stop", "skip")


@flax.struct.dataclass
class TrainState:
  """Everything a step changes.

  Attributes:
    step: number of steps taken (skipped ones included).
    params: the trained parameters.
    opt_state: the optimizer's state.
    ema_params: an exponential moving average of params, or None.
    skipped: how many steps had a non-finite loss or gradient.
    first_bad_step: the first such step (1-based), or -1.
    refine: the refinement phase's fake network and the two optimizer
      states (`boot_jax.refine`), or None without `boot.refine`.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None
  skipped: jax.Array = None
  first_bad_step: jax.Array = None
  refine: Any = None


def create(
  params, optimizer: optax.GradientTransformation, ema: bool, refine=None
):
  """A fresh state (jit it with out_shardings to build it sharded)."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    ema_params=jax.tree.map(jnp.array, params) if ema else None,
    skipped=jnp.zeros((), jnp.int32),
    first_bad_step=jnp.full((), -1, jnp.int32),
    refine=refine,
  )


def ema_update(ema, params, decay: float):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def apply_gradients(
  state: TrainState,
  grads,
  loss,
  optimizer: optax.GradientTransformation,
  ema_decay: float | None,
  nan_policy: str = "stop",
):
  """One optimizer update, guarded against non-finite losses and grads.

  A step whose loss or gradient norm is not finite changes nothing but the
  counters. With `nan_policy='stop'` every later step is frozen too, so the
  state stays the last good one until the host sees `first_bad_step` and
  stops; with 'skip' training continues and `skipped` counts such steps.

  Returns:
    `(new_state, grad_norm)`.
  """
  if nan_policy not in NAN_POLICIES:
    raise ValueError(
      f"unknown train.nan_policy {nan_policy!r}; expected {NAN_POLICIES}"
    )
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = ema_update(ema, params, ema_decay)
  proposed = state.replace(params=params, opt_state=opt_state, ema_params=ema)
  return guard(state, proposed, finite, nan_policy), grad_norm


def guard(state: TrainState, proposed: TrainState, finite, nan_policy: str):
  """`proposed` with the step counted, or `state` (counters updated) when
  the step was not finite or an earlier one was (`nan_policy='stop'`)."""
  if nan_policy not in NAN_POLICIES:
    raise ValueError(
      f"unknown train.nan_policy {nan_policy!r}; expected {NAN_POLICIES}"
    )
  step = state.step + 1
  keep = finite
  if nan_policy == "stop":
    keep = finite & (state.first_bad_step < 0)
  new = jax.tree.map(lambda n, o: jnp.where(keep, n, o), proposed, state)
  first_bad = jnp.where(
    (state.first_bad_step < 0) & ~finite, step, state.first_bad_step
  )
  return new.replace(
    step=step,
    skipped=state.skipped + (~finite).astype(jnp.int32),
    first_bad_step=first_bad,
  )
