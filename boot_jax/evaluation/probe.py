"""A data-free progress signal: the student against the teacher's DDIM.

Real teachers come without samples of their distribution, so no metric
against data can say how a run is going. The probe needs none: on a fixed
set of held-out noise (never a training draw) it compares the student's one
step with the teacher's own DDIM from the same noise:

  * `probe_mse`: against DDIM on the run's grid (N steps, the trajectories
    BOOT distils), the mean squared difference per element, over the
    reference's variance per element (0 for a student that lands exactly
    where the teacher's DDIM-N does);
  * `probe_mmd2`: against the teacher's DDIM with `train.probe_fine_factor`
    x N steps (16 by default; 1: DDIM-N), the squared kernel MMD between
    the two sets of samples, the unbiased estimate (pairs `i = j` left out
    of every sum, so the shared noise does not enter it; it can be
    slightly negative), with `mixture_eval.mmd`'s kernels and a bandwidth
    fixed for the run (the median squared distance between the
    reference's samples). It compares distributions, not pairs, so it can
    fall while `probe_mse` rises: the refinement moves the student off the
    teacher's pairing of noise and sample on purpose, and towards the
    distribution of the teacher's ODE, which a finer DDIM follows more
    closely than DDIM-N (on the mixtures, against DDIM-N the estimate rises
    through the refinement while the MMD to exact samples falls;
    docs/BENCHMARKS.md).

The references are computed once, at the first logged step, at
`min(train.probe_samples, train.batch_size)` samples: at most the batch
the run's teacher calls already hold, and (1 + factor) N teacher calls.
`train.probe_samples = 0` turns it off; runs whose batch is under
`MIN_SAMPLES` have none.
docs/BENCHMARKS.md shows how the probe follows the MMD to exact samples on
the mixture sweep.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.distill import boot, conditions
from boot_jax.evaluation import mixture_eval
from boot_jax.runtime import sharding

# Fewer samples say nothing of a distribution: no probe below this.
MIN_SAMPLES = 16
# Held-out noise: a seed of its own, so the probe never sees a training
# draw (those fold `train.seed`) nor the evaluation's (`eval.seed`).
PROBE_SEED = 0x9E3779B9


def probe_size(config) -> int:
  """How many held-out samples the probe compares (0: no probe)."""
  wanted = int(config.train.get("probe_samples", 0) or 0)
  return min(wanted, int(config.train.batch_size))


def fine_factor(config) -> int:
  """How many times finer than the run's grid `probe_mmd2`'s DDIM is."""
  return int(config.train.get("probe_fine_factor", 1) or 1)


def probe_guidance(config):
  """The w of the probe: the run's fixed w, or its range's middle."""
  lo_hi = config.boot.get("guidance_range")
  if lo_hi is not None:
    return 0.5 * (float(lo_hi[0]) + float(lo_hi[1]))
  w = config.boot.get("guidance")
  return None if w is None else float(w)


@jax.jit
def mmd2_unbiased(x, y, widths):
  """The unbiased MMD^2 of paired sets `x, y` `[n, D]`: every sum over
  `i != j` (a sum of Gaussian kernels of variances `widths`)."""
  n = x.shape[0]
  off = 1.0 - jnp.eye(n, dtype=x.dtype)

  def mean_off_diagonal(a, b):
    d = mixture_eval.sqdist(a, b)
    k = jnp.sum(jnp.exp(-d[..., None] / widths), -1)
    return jnp.sum(k * off) / (n * (n - 1))

  return (
    mean_off_diagonal(x, x)
    + mean_off_diagonal(y, y)
    - 2 * mean_off_diagonal(x, y)
  )


class Probe:
  """`probe(params) -> {'probe_mse': ..., 'probe_mmd2': ...}` (floats).

  Every process calls it with the same parameters (the student's step is
  sharded); the reference is built on the first call, with a line to
  `printer` first (it runs the teacher's DDIM-N once).
  """

  def __init__(self, teacher, student, grid, mesh, config, printer=print):
    self.num = probe_size(config)
    if self.num < MIN_SAMPLES:
      raise ValueError(f"the probe compares at least {MIN_SAMPLES} samples")
    self.teacher, self.student, self.grid = teacher, student, grid
    # Replicated outputs: every process can read them (multi-host runs).
    self.out = sharding.replicated(mesh)
    self.guidance = probe_guidance(config)
    self.fine_steps = self.grid.num_steps * fine_factor(config)
    if teacher.schedule.kind == "discrete":  # no finer than the table
      self.fine_steps = min(self.fine_steps, teacher.schedule.num_train_steps)
    self.printer = printer
    self._reference = None

  def _ddim(self, eps, cond, timesteps) -> np.ndarray:
    teacher, w = self.teacher, self.guidance
    out = jax.jit(
      lambda p, e, c: teacher.ddim(p, e, timesteps, c, w),
      out_shardings=self.out,
    )(teacher.params, eps, cond)
    return np.asarray(out, np.float64).reshape(self.num, -1)

  def _build(self):
    eps, cond = conditions.eval_inputs(self.teacher, self.num, PROBE_SEED)
    n, fine = self.grid.num_steps, self.fine_steps
    steps = f"DDIM-{n}" + (f" and DDIM-{fine}" if fine != n else "")
    self.printer(
      f"probe: the teacher's {steps} on {self.num} held-out noises (once; "
      "train.probe_samples=0 turns it off)"
    )
    ref = self._ddim(eps, cond, self.grid.ddim_timesteps())
    var = float(ref.var(axis=0).mean())
    if fine != n:
      # A uniform BOOT grid of `fine` steps (a discrete table's trailing
      # timesteps, from T - 1 down), not the teacher's own sampler spacing:
      # SD's 'leading' starts far below T - 1 at such step counts (at
      # timestep 512 for 512 steps of a 1,000-step table).
      grid = boot.make_grid(self.teacher.schedule, fine)
      ref_fine = self._ddim(eps, cond, grid.ddim_timesteps())
    else:
      ref_fine = ref
    _, bandwidth = mixture_eval.mmd(ref_fine, ref_fine)
    w_student = self.guidance if self.student.guided else None
    student = self.student
    self._generate = jax.jit(
      lambda p, e, c: student.generate(p, e, c, w_student),
      out_shardings=self.out,
    )
    self._reference = (
      eps,
      cond,
      ref.astype(np.float32),
      var,
      ref_fine.astype(np.float32),
      bandwidth,
    )

  def __call__(self, params) -> dict:
    if self._reference is None:
      self._build()
    eps, cond, ref, var, ref_fine, bandwidth = self._reference
    out = np.asarray(self._generate(params, eps, cond), np.float32)
    out = out.reshape(self.num, -1)
    mse = float(np.mean(np.square(out - ref)))
    widths = jnp.asarray(mixture_eval.MMD_SCALES) * bandwidth
    return {
      "probe_mse": mse / max(var, 1e-12),
      "probe_mmd2": float(mmd2_unbiased(out, ref_fine, widths)),
    }


def make_probe(teacher, student, grid, mesh, config, printer=print):
  """The run's probe, or None when `train.probe_samples` is 0 or the
  probe would compare fewer than `MIN_SAMPLES` (a batch that small)."""
  if probe_size(config) < MIN_SAMPLES:
    return None
  return Probe(teacher, student, grid, mesh, config, printer)
