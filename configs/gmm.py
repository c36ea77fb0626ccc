"""BOOT on the analytic Gaussian-mixture teacher (seconds on a CPU).

    python -m boot_jax.train --config configs/gmm.py --workdir /tmp/gmm
    python -m boot_jax.train --config configs/gmm.py:random16 --workdir W
    python -m boot_jax.train --config configs/gmm.py:circle_cond --workdir W

Presets (the part after ':'):
  circle       2-D, 8 components on a circle of radius 2, std 0.15.
  random16     16-D, 8 components with random means (norm ~ 2), std 0.15.
  circle_cond  circle, class-conditional, classifier-free guidance w = 2.
  circle_guided  circle_cond's teacher with a guidance-conditioned student:
               w drawn per example from [0.5, 4.5], evaluated at w = 1, 2, 4.
  circle_flow  the circle under the rectified flow `x_t = (1 - t) x_0 +
               t eps` (SD3's and FLUX's path; docs/method.md): the teacher
               samples by Euler steps. Any preset takes it with
               --config.teacher.schedule=rectified_flow.
  sweepI       the circle's settings on random mixture I (I >= 0) of
               `recipes.sweep_mixture`: 2-D or 8-D, 4 to 16 components of
               unequal stds and weights (benchmarks/mixture_sweep.py).

The teacher section holds (dim, num_components, scale, std, seed, layout);
the resolved config written to the work directory adds the explicit
`means`, `stds` and `weights`.
"""

from boot_jax.config import recipes

PRESETS = recipes.GMM_PRESETS


def get_config(arg: str = "circle"):
  return recipes.gmm_config(arg)
