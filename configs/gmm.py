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

The teacher section holds (dim, num_components, scale, std, seed, layout);
the resolved config written to the work directory adds the explicit
`means`, `stds` and `weights`.
"""

import ml_collections

from boot_jax import config_lib

PRESETS = ("circle", "random16", "circle_cond", "circle_guided")


def get_config(arg: str = "circle"):
  arg = arg or "circle"
  if arg not in PRESETS:
    raise ValueError(f"unknown gmm preset {arg!r}; expected one of {PRESETS}")
  c = config_lib.base_config()
  t = c.teacher = ml_collections.ConfigDict()
  t.name = "gmm"
  t.dim = 16 if arg == "random16" else 2
  t.num_components = 8
  t.scale = 2.0
  t.std = 0.15
  t.seed = 0
  t.layout = "random" if arg == "random16" else "circle"
  t.conditional = arg in ("circle_cond", "circle_guided")
  t.schedule = config_lib.discrete_schedule("linear")
  # Filled in by the teacher builder when left None.
  t.means = None
  t.stds = None
  t.weights = None

  c.student.init = "fresh"
  c.student.model = ml_collections.ConfigDict(
    dict(name="mlp", width=128, depth=4, mlp_ratio=2, time_scale=1.0)
  )
  if arg == "circle_cond":
    c.boot.guidance = 2.0
  if arg == "circle_guided":
    c.boot.guidance_range = (0.5, 4.5)
    c.eval.guidance_scales = (1.0, 2.0, 4.0)

  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 200
  c.optim.final_lr_fraction = 0.05

  c.train.steps = 8000
  c.train.batch_size = 256
  c.train.log_every = 500
  c.train.ckpt_every = 2000
  c.train.eval_every = 8000
  # The mixture's networks are tiny: one device is fastest, and a run
  # gives the same numbers on any host. Use -1 to split the batch over
  # every device.
  c.mesh.data = 1
  return c
