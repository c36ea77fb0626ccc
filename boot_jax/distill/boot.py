"""The BOOT objective: pure functions of arrays and apply functions.

For each example (docs/method.md), with `s < t` consecutive points of a grid:

    y_hat_t = stop_gradient(g(eps, t, c))
    x_hat_t = alpha_t y_hat_t + sigma_t eps
    target  = stop_gradient(y_hat_t + delta (f_w(x_hat_t, t, c) - y_hat_t))
    L_BS    = || g(eps, s, c) - target ||^2 / delta^2
    L_BC    = || g(eps, T, c) - f_w(eps, T, c) ||^2
    L       = mean(L_BS) + beta mean(L_BC)

`delta = 1 - (sigma_s alpha_t) / (sigma_t alpha_s)` is the exact DDIM step in
signal space. Squared norms are averaged over the sample's dimensions (not
summed), so the loss scale does not depend on the resolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.diffusion import predictions
from boot_jax.teachers import base

SPACINGS = ("uniform", "lambda")
WEIGHTINGS = ("inv_delta_sq", "none")
BOUNDARY_TARGETS = ("teacher", "ddim")


@dataclasses.dataclass(frozen=True)
class Grid:
  """N steps between the clean end and T, ascending.

  Attributes:
    times: `[N + 1]`; `times[0]` is the schedule's clean end (where sampling
      ends), `times[N]` the noise end T.
    alphas, sigmas: `[N + 1]` float32 at those times.
  """

  times: np.ndarray
  alphas: np.ndarray
  sigmas: np.ndarray

  @property
  def num_steps(self) -> int:
    return len(self.times) - 1

  def ddim_timesteps(self) -> np.ndarray:
    """The teacher's DDIM-N model-call times on this grid, descending."""
    return self.times[1:][::-1].copy()


def make_grid(
  schedule: predictions.Schedule, num_steps: int, spacing="uniform"
):
  """The BOOT time grid of `num_steps` steps.

  * uniform: for discrete teachers the DDIM 'trailing' timesteps
    `round(i T / N) - 1`, i = 1..N (so T - 1, the table's last timestep, is
    the top); for continuous schedules `i / N`.
  * lambda: uniform in `lambda = log(sigma / alpha)` between the lowest
    and the highest model-call time (for discrete teachers rounded to the
    nearest timestep, duplicates removed, so there may be fewer than N
    steps; for continuous ones the top point is moved just below `t = 1`
    when `lambda(1)` is infinite, and `t = 1` itself kept as the top).

  The clean end is always prepended; the last step goes there (delta = 1).
  """
  if num_steps < 1:
    raise ValueError(f"boot.num_steps must be >= 1, got {num_steps}")
  if spacing not in SPACINGS:
    raise ValueError(f"unknown grid spacing {spacing!r}; expected {SPACINGS}")
  discrete = schedule.kind == "discrete"
  if discrete:
    calls = schedule.timesteps(num_steps, "trailing")[::-1].astype(np.float64)
  else:
    calls = np.arange(1, num_steps + 1) / num_steps
  if spacing == "lambda" and num_steps > 1:
    calls = _lambda_uniform(schedule, calls[0], calls[-1], num_steps)
  times = np.concatenate([[schedule.t_clean], calls]).astype(np.float32)
  alphas, sigmas = (np.asarray(v) for v in schedule.alpha_sigma(times))
  return Grid(times, alphas.astype(np.float32), sigmas.astype(np.float32))


def _lambda_uniform(schedule, t_lo, t_hi, num_steps):
  """Times from t_lo to t_hi with lambda uniformly spaced (numpy float64).

  Where `lambda(t_hi)` is infinite (alpha = 0), the uniform range ends at
  the uniform grid's second-highest point, `t_hi - (t_hi - t_lo) /
  (N - 1)`, and `t_hi` is appended as the top.
  """
  if schedule.kind == "discrete":
    ts = np.arange(int(t_lo), int(t_hi) + 1, dtype=np.float64)
  else:
    ts = np.linspace(t_lo, t_hi, 200_001)
  a, s = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(ts))
  with np.errstate(divide="ignore"):
    lam = np.log(s) - np.log(a)
  top = []
  if not np.isfinite(lam[-1]):
    top = [t_hi]
    t_top = t_hi - (t_hi - t_lo) / (num_steps - 1)
    keep = ts <= t_top
    ts, lam = ts[keep], lam[keep]
    num_steps -= 1
  targets = np.linspace(lam[0], lam[-1], num_steps)
  if schedule.kind == "discrete":
    # Nearest integer timestep; duplicates (where timesteps are coarser
    # than the lambda spacing) are dropped.
    idx = np.clip(np.searchsorted(lam, targets), 1, len(ts) - 1)
    nearer_left = (targets - lam[idx - 1]) < (lam[idx] - targets)
    out = np.unique(ts[idx - nearer_left])
  else:
    out = np.interp(targets, lam, ts)
  return np.concatenate([out, top])


def time_inputs(grid: Grid, idx):
  """Per-example `t, s` and their alphas and sigmas from grid indices."""
  times = jnp.asarray(grid.times)
  alphas = jnp.asarray(grid.alphas)
  sigmas = jnp.asarray(grid.sigmas)
  b = idx.shape[0]
  top = grid.num_steps
  return dict(
    t=times[idx],
    s=times[idx - 1],
    alpha_t=alphas[idx],
    sigma_t=sigmas[idx],
    alpha_s=alphas[idx - 1],
    sigma_s=sigmas[idx - 1],
    t_T=jnp.full((b,), times[top]),
    alpha_T=jnp.full((b,), alphas[top]),
    sigma_T=jnp.full((b,), sigmas[top]),
  )


def _sq(x):
  """Squared norm averaged over all but the batch axis."""
  return jnp.mean(jnp.square(x).reshape(x.shape[0], -1), axis=-1)


def _bcast(a, x):
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def boot_loss(
  params,
  batch: dict,
  student_fn: Callable[[Any, jax.Array, jax.Array, Any], jax.Array],
  teacher_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
  *,
  boundary_weight: float = 1.0,
  weighting: str = "inv_delta_sq",
  weight_clip: float | None = None,
  space: str = "signal",
  boundary_target: str = "teacher",
):
  """The BOOT loss and its terms.

  Args:
    params: student parameters (the only thing differentiated).
    batch: `eps [B, ...]`, `cond` (or None) and the per-example time inputs
      of `time_inputs` (`t, s, alpha_t, sigma_t, alpha_s, sigma_s, t_T,
      alpha_T, sigma_T`, all `[B]`).
    student_fn: `(params, eps, t, cond) -> y_t` (or `x_t` with space 'x').
    teacher_fn: `(x_t, t, cond) -> f_w(x_t, t, c)`, the guided
      x0-prediction of the frozen teacher (its params closed over).
    boundary_weight: beta; 0 drops the boundary term and its teacher call.
    weighting: 'inv_delta_sq' (1 / delta^2) or 'none' (ablation).
    weight_clip: an upper bound on the weight (None: no bound).
    space: 'signal' (the method) or 'x' (ablation: the student predicts
      `x_t` and the target is the x-space DDIM step).
    boundary_target: 'teacher' (docs/method.md: `f_w(eps, T)`) or 'ddim': the
      signal of the DDIM start `x_T = eps`, `(1 - sigma_T) / alpha_T eps`
      (exact for tables with `alpha_T > 0`; equal to 'teacher' when
      `alpha_T = 0`, where the signal is defined by continuity).

  Returns:
    `(loss, metrics)` with the scalar terms.
  """
  eps, cond = batch["eps"], batch.get("cond")
  t, s, t_T = batch["t"], batch["s"], batch["t_T"]
  a_t, s_t = batch["alpha_t"], batch["sigma_t"]
  a_s, s_s = batch["alpha_s"], batch["sigma_s"]
  a_T, s_T = batch["alpha_T"], batch["sigma_T"]
  use_boundary = boundary_weight != 0
  double = base.interleave  # keeps a sharded batch local

  # Student at t, without gradient.
  g_t = jax.lax.stop_gradient(student_fn(params, eps, t, cond))
  x_hat_t = (
    g_t if space == "x" else predictions.x_from_signal(g_t, eps, a_t, s_t)
  )

  # One teacher call: the step's point, and the boundary point x_T = eps.
  if use_boundary:
    f = teacher_fn(double(x_hat_t, eps), double(t, t_T), double(cond, cond))
    f_t, f_T = base.deinterleave(f)
  else:
    f_t = teacher_fn(x_hat_t, t, cond)
  delta = predictions.ddim_delta(a_t, s_t, a_s, s_s)
  if space == "x":
    x0_eps = predictions.x0_eps_from_output(f_t, x_hat_t, a_t, s_t, "x0")
    target = predictions.ddim_step_from_pair(*x0_eps, a_s, s_s)
  else:
    target = predictions.signal_step(g_t, f_t, delta)
  target = jax.lax.stop_gradient(target)

  # Student at s (and at T), with gradient: one call.
  if use_boundary:
    g = student_fn(params, double(eps, eps), double(s, t_T), double(cond, cond))
    g_s, g_T = base.deinterleave(g)
  else:
    g_s = student_fn(params, eps, s, cond)

  if weighting == "inv_delta_sq":
    weight = 1.0 / jnp.square(delta)
  elif weighting == "none":
    weight = jnp.ones_like(delta)
  else:
    raise ValueError(f"unknown weighting {weighting!r}; expected {WEIGHTINGS}")
  if weight_clip is not None:
    weight = jnp.minimum(weight, weight_clip)
  residual = _sq(g_s - target)
  loss_bs = jnp.mean(weight * residual)
  metrics = dict(
    loss_bs=loss_bs,
    residual=jnp.mean(residual),
    weight=jnp.mean(weight),
    delta=jnp.mean(delta),
  )
  loss = loss_bs
  if use_boundary:
    target_T = _boundary_target(boundary_target, space, f_T, eps, a_T, s_T)
    loss_bc = jnp.mean(_sq(g_T - jax.lax.stop_gradient(target_T)))
    loss = loss + boundary_weight * loss_bc
    metrics["loss_bc"] = loss_bc
  metrics["loss"] = loss
  return loss, metrics


def _boundary_target(kind, space, f_T, eps, alpha_T, sigma_T):
  if kind not in BOUNDARY_TARGETS:
    raise ValueError(
      f"unknown boundary target {kind!r}; expected {BOUNDARY_TARGETS}"
    )
  if space == "x":
    # The DDIM start point itself.
    return eps
  if kind == "teacher":
    return f_T
  a, s = _bcast(alpha_T, eps), _bcast(sigma_T, eps)
  safe_a = jnp.where(a > 0, a, 1.0)
  return jnp.where(a > 0, (1.0 - s) / safe_a * eps, f_T)
