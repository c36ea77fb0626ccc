"""Evaluation: the student against the teacher's DDIM-N and the data.

For the analytic mixture everything is exact or Monte Carlo with known
error: the student's one step `g(eps, clean)` is compared with the teacher's
DDIM over the training grid from the same `eps`, and the student's samples
with exact samples of the mixture.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax import boot, conditions
from boot_jax.teachers import gmm

# Kernel widths of the MMD, as fractions of the median squared pairwise
# distance of the reference samples: one wide kernel sees the component
# weights, the narrow ones the shape of each component.
MMD_SCALES = (0.01, 0.1, 1.0)


def eval_inputs(teacher, num: int, seed: int):
  """Fixed evaluation noise (and uniform labels for conditional teachers)."""
  key = jax.random.key(seed)
  eps = conditions.draw_noise(
    key, 0, jnp.arange(num), tuple(teacher.sample_shape)
  )
  cond = None
  if teacher.condition.kind == "class":
    cond = jax.random.randint(
      jax.random.fold_in(key, 1), (num,), 0, teacher.condition.num_classes
    )
  return eps, cond


def batched(fn, *args, batch_size: int):
  """Applies a jitted `fn` over leading-axis chunks (None args pass)."""
  n = next(a.shape[0] for a in args if a is not None)
  outs = []
  for i in range(0, n, batch_size):
    chunk = [None if a is None else a[i : i + batch_size] for a in args]
    outs.append(np.asarray(fn(*chunk)))
  return np.concatenate(outs)


def teacher_ddim(teacher, grid: boot.Grid, eps, cond, guidance, batch_size):
  """The teacher's DDIM-N on the grid's model-call times from `eps`."""
  ts = grid.ddim_timesteps()
  fn = jax.jit(lambda e, c: teacher.ddim(teacher.params, e, ts, c, guidance))
  return batched(fn, eps, cond, batch_size=batch_size)


def student_one_step(student, params, eps, cond, batch_size):
  fn = jax.jit(lambda e, c: student.generate(params, e, c))
  return batched(fn, eps, cond, batch_size=batch_size)


def mmd(x, y, scales=MMD_SCALES, bandwidth=None):
  """Biased (V-statistic) kernel MMD with a sum of Gaussian kernels.

  The biased estimator is always >= 0 and its sampling floor is positive,
  so ratios of MMDs stay meaningful for two good samplers.

  Args:
    x, y: `[n, D]`, `[m, D]` samples.
    scales: kernel variances as fractions of `bandwidth`.
    bandwidth: reference squared distance (default: median over `y`).

  Returns:
    `(mmd, bandwidth)`; mmd is the square root of the MMD^2 estimate.
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if bandwidth is None:
    d = _sqdist(y[:1000], y[:1000])
    bandwidth = float(jnp.median(d[jnp.triu_indices(d.shape[0], 1)]))
  val = _mmd2(x, y, jnp.asarray(scales) * bandwidth)
  return float(jnp.sqrt(jnp.maximum(val, 0.0))), bandwidth


def _sqdist(a, b):
  return (
    jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2 * a @ b.T
  ).clip(0.0)


@jax.jit
def _mmd2(x, y, widths):
  def k(a, b):
    d = _sqdist(a, b)
    return jnp.mean(jnp.sum(jnp.exp(-d[..., None] / widths), -1))

  return k(x, x) + k(y, y) - 2 * k(x, y)


def gmm_report(
  teacher,
  student,
  params,
  grid: boot.Grid,
  guidance=None,
  num: int = 4000,
  seed: int = 12345,
  batch_size: int = 1000,
):
  """Student one-step vs teacher DDIM-N on `num` fresh eps, and vs data.

  Returns a dict with:
    agreement: fraction of eps whose two outputs share a component.
    mse: mean squared error per coordinate between the two outputs.
    mse_over_var: mse over the data's per-coordinate variance.
    weight_error: max |student component frequency - mixture weight|
      (unconditional teachers).
    mmd_student, mmd_teacher: MMD of each to exact mixture samples, and
    mmd_ratio: their ratio (unconditional teachers).
  """
  eps, cond = eval_inputs(teacher, num, seed)
  ref = teacher_ddim(teacher, grid, eps, cond, guidance, batch_size)
  out = student_one_step(student, params, eps, cond, batch_size)
  p = teacher.params
  comp_ref = np.asarray(gmm.assign(p, jnp.asarray(ref)))
  comp_out = np.asarray(gmm.assign(p, jnp.asarray(out)))
  data_var = _data_variance(p)
  mse = float(np.mean((out - ref) ** 2))
  report = dict(
    agreement=float(np.mean(comp_ref == comp_out)),
    mse=mse,
    mse_over_var=mse / data_var,
    num_eval=int(num),
    num_grid_steps=int(grid.num_steps),
  )
  if teacher.condition.kind == "none":
    weights = np.exp(np.asarray(p["log_weights"], np.float64))
    freq = np.bincount(comp_out, minlength=len(weights)) / num
    true, _ = gmm.sample(p, jax.random.key(seed + 1), num)
    m_student, bw = mmd(out, true)
    m_teacher, _ = mmd(ref, true, bandwidth=bw)
    report.update(
      weight_error=float(np.max(np.abs(freq - weights))),
      mmd_student=m_student,
      mmd_teacher=m_teacher,
      mmd_ratio=m_student / m_teacher,
    )
  return report


def _data_variance(params) -> float:
  """Per-coordinate variance of the mixture, averaged over coordinates."""
  mu = np.asarray(params["means"], np.float64)
  s = np.asarray(params["stds"], np.float64)
  w = np.exp(np.asarray(params["log_weights"], np.float64))
  mean = w @ mu
  second = w @ (mu**2) + w @ (s**2)
  return float(np.mean(second - mean**2))
