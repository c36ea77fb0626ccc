"""Diffusion math: prediction conversions and DDIM steps.

Everything here is pure and jittable. Network outputs in any of the four
parameterisations (eps, v, x0, flow) are read as the pair `(x0_hat,
eps_hat)` and written back; the deterministic DDIM step is given in x
space and in signal space (`y_t = (x_t - sigma_t eps) / alpha_t`), and
`ddim_sample` runs it over a timestep grid. The noise schedules themselves
(DDPM tables, VP schedules, the rectified flow, `make_schedule`) are in
`boot_jax.schedules` and re-exported here, so `diffusion.DiscreteSchedule`
and the like keep working; docs/method.md gives the equations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from boot_jax.diffusion.schedules import (
  ContinuousSchedule,
  DiscreteSchedule,
  Schedule,
  lambda_,
  make_betas,
  make_schedule,
)

# Public names; the schedule names are re-exported from boot_jax.schedules
# (listing them here tells ruff the imports are used, not F401).
__all__ = [
  # Re-exported from boot_jax.schedules.
  "ContinuousSchedule",
  "DiscreteSchedule",
  "Schedule",
  "lambda_",
  "make_betas",
  "make_schedule",
  # Defined here.
  "PREDICTIONS",
  "canonical_prediction",
  "x0_eps_from_output",
  "output_from_x0_eps",
  "to_x0",
  "signal_from_x",
  "x_from_signal",
  "ddim_delta",
  "signal_step",
  "ddim_step_from_pair",
  "ddim_step",
  "ddim_sample",
]

PREDICTIONS = ("eps", "v", "x0", "flow")
# diffusers spells prediction types differently; accept both.
_PREDICTION_ALIASES = {
  "epsilon": "eps",
  "eps": "eps",
  "v_prediction": "v",
  "v": "v",
  "sample": "x0",
  "x0": "x0",
  # A flow-matching network's velocity `eps - x0` (SD3, FLUX).
  "flow": "flow",
  "flow_prediction": "flow",
}


def canonical_prediction(name: str) -> str:
  """Maps diffusers' and our prediction names onto 'eps', 'v', 'x0' or
  'flow'."""
  try:
    return _PREDICTION_ALIASES[name]
  except KeyError:
    raise ValueError(
      f"unknown prediction type {name!r}; expected one of "
      f"{sorted(_PREDICTION_ALIASES)}"
    ) from None


# ---------------------------------------------------------------------------
# Conversions between parameterisations.


def _bcast(a, x):
  """Reshapes per-example coefficients `[B]` (or scalars) to broadcast on x."""
  a = jnp.asarray(a, x.dtype)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def x0_eps_from_output(output, x_t, alpha, sigma, prediction: str):
  """Reads a network output as the pair `(x0_hat, eps_hat)`.

  * eps: `x0 = (x_t - sigma eps) / alpha`.
  * v (`v = alpha eps - sigma x0`): `x0 = alpha x_t - sigma v`,
    `eps = sigma x_t + alpha v`.
  * x0: `eps = (x_t - alpha x0) / sigma`.
  * flow (the velocity `u = eps - x0` of a flow-matching network):
    `x0 = (x_t - sigma u) / (alpha + sigma)`, `eps = (x_t + alpha u) /
    (alpha + sigma)`; on the rectified flow (`alpha + sigma = 1`) the
    DDIM step to s is then exactly the Euler step `x_t + (s - t) u`.

  Both members are computed directly from the output, never one from the
  other, which keeps them as accurate as diffusers' scheduler.
  """
  alpha, sigma = _bcast(alpha, x_t), _bcast(sigma, x_t)
  if prediction == "eps":
    return (x_t - sigma * output) / alpha, output
  if prediction == "v":
    return alpha * x_t - sigma * output, sigma * x_t + alpha * output
  if prediction == "x0":
    return output, (x_t - alpha * output) / sigma
  if prediction == "flow":
    total = alpha + sigma
    return (x_t - sigma * output) / total, (x_t + alpha * output) / total
  raise ValueError(f"unknown prediction type {prediction!r}")


def output_from_x0_eps(x0, eps, alpha, sigma, prediction: str):
  """The inverse of `x0_eps_from_output`: the native output for a pair."""
  alpha, sigma = _bcast(alpha, x0), _bcast(sigma, x0)
  if prediction == "eps":
    return eps
  if prediction == "v":
    return alpha * eps - sigma * x0
  if prediction == "x0":
    return x0
  if prediction == "flow":
    return eps - x0
  raise ValueError(f"unknown prediction type {prediction!r}")


def to_x0(output, x_t, alpha, sigma, prediction: str):
  """The x0-prediction read from a native output."""
  if prediction == "x0":
    return output
  return x0_eps_from_output(output, x_t, alpha, sigma, prediction)[0]


def signal_from_x(x_t, eps, alpha, sigma):
  """`y_t = (x_t - sigma_t eps) / alpha_t` (undefined where alpha_t = 0)."""
  return (x_t - _bcast(sigma, x_t) * eps) / _bcast(alpha, x_t)


def x_from_signal(y_t, eps, alpha, sigma):
  """`x_t = alpha_t y_t + sigma_t eps`."""
  return _bcast(alpha, y_t) * y_t + _bcast(sigma, y_t) * eps


# ---------------------------------------------------------------------------
# DDIM.


def ddim_delta(alpha_t, sigma_t, alpha_s, sigma_s):
  """The signal-space DDIM step size from t to s < t.

  `delta = 1 - (sigma_s alpha_t) / (sigma_t alpha_s) = 1 - exp(lambda_s -
  lambda_t)`. It is 1 when s is the clean end (`sigma_s = 0`) or t the noise
  end with `alpha_t = 0`.
  """
  return 1.0 - (sigma_s * alpha_t) / (sigma_t * alpha_s)


def signal_step(y_t, f_t, delta):
  """One exact DDIM step in signal space: `y_s = y_t + delta (f - y_t)`."""
  return y_t + _bcast(delta, y_t) * (f_t - y_t)


def ddim_step_from_pair(x0, eps, alpha_s, sigma_s):
  """`x_s = alpha_s x0_hat + sigma_s eps_hat` (deterministic DDIM, eta 0)."""
  return _bcast(alpha_s, x0) * x0 + _bcast(sigma_s, x0) * eps


def ddim_step(
  schedule: Schedule, x_t, output, t, s, prediction: str, x0_fn=None
) -> tuple[jax.Array, jax.Array]:
  """One deterministic DDIM step from t to s for per-example times.

  Args:
    schedule: the noise schedule.
    x_t: `[B, ...]` current sample.
    output: `[B, ...]` the model's native output at `(x_t, t)`.
    t: `[B]` or scalar current times.
    s: `[B]` or scalar target times (`s < t`; the clean end allowed).
    prediction: 'eps', 'v', 'x0' or 'flow'.
    x0_fn: None, or `x0_hat -> x0_hat'` applied to the clean estimate only
      (the noise estimate is kept), as diffusers' `DDIMScheduler` clips or
      thresholds it.

  Returns:
    `(x_s, x0_hat)`.
  """
  alpha_t, sigma_t = schedule.alpha_sigma(t)
  alpha_s, sigma_s = schedule.alpha_sigma(s)
  x0, eps = x0_eps_from_output(output, x_t, alpha_t, sigma_t, prediction)
  if x0_fn is not None:
    x0 = x0_fn(x0)
  return ddim_step_from_pair(x0, eps, alpha_s, sigma_s), x0


def ddim_sample(
  model_fn: Callable[[jax.Array, jax.Array], jax.Array],
  x_T,
  schedule: Schedule,
  timesteps,
  prediction: str,
  return_trajectory: bool = False,
  x0_fn=None,
):
  """Deterministic DDIM over a descending timestep grid, ending clean.

  Each `timesteps[k]` steps to `timesteps[k + 1]`, and the last one to the
  schedule's clean end. (For grids where `T` is a multiple of the step count
  this is exactly diffusers' `DDIMScheduler` with eta 0.)

  Args:
    model_fn: `(x_t [B, ...], t [B]) -> native output [B, ...]`.
    x_T: `[B, ...]` the starting noise.
    schedule: the noise schedule.
    timesteps: descending times `[K]` (numpy or jax array).
    prediction: native prediction type of `model_fn`.
    return_trajectory: also return every intermediate sample.
    x0_fn: processing of each step's clean estimate (`ddim_step`).

  Returns:
    The final sample, and with `return_trajectory` a pair
    `(x_final, xs [K, B, ...])` where `xs[k]` is the sample after step k.
  """
  ts = jnp.asarray(timesteps, jnp.float32)
  nexts = jnp.concatenate([ts[1:], jnp.full((1,), schedule.t_clean)])
  batch = x_T.shape[0]

  def body(x, pair):
    t, s = pair
    tb = jnp.full((batch,), t)
    out = model_fn(x, tb)
    x_s, _ = ddim_step(
      schedule, x, out, tb, jnp.full((batch,), s), prediction, x0_fn
    )
    return x_s, (x_s if return_trajectory else None)

  x, xs = jax.lax.scan(body, x_T, (ts, nexts))
  if return_trajectory:
    return x, xs
  return x


def threshold(x0, ratio: float, max_value: float):
  """Dynamic thresholding of clean estimates `[B, ...]` (diffusers'
  `_threshold_sample`, which IF's pipelines run): each sample is clipped
  to its `ratio` quantile of |x0| (at least 1, at most `max_value`) and
  divided by it."""
  flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.float32)
  s = jnp.clip(jnp.quantile(flat, ratio, axis=1), 1.0, max_value)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
  return jnp.clip(x0, -s, s) / s


def x0_processing(options: dict, thresholding: bool | None = None):
  """What a DDIM sampler does to each clean estimate (`ddim_sample`'s
  `x0_fn`; None: nothing), from a scheduler's options
  (`teachers.folders.ddim_options`): dynamic thresholding when
  `thresholding` (None: as the options say), else clipping to
  +-clip_range when they say `clip_sample`."""
  if thresholding is None:
    thresholding = options["thresholding"]
  if thresholding:
    return functools.partial(
      threshold, ratio=options["ratio"], max_value=options["max_value"]
    )
  if options["clip_sample"]:
    r = options["clip_range"]
    return lambda x0: jnp.clip(x0, -r, r)
  return None
