"""Config defaults shared by configs/*.py, and their validation.

Sections (DESIGN.md): `teacher`, `student`, `boot`, `optim`, `train`,
`mesh`, `eval`. Files in configs/ start from `base_config()` and override.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def discrete_schedule(
  beta_schedule: str = "linear",
  num_train_steps: int = 1000,
  beta_start: float = 0.0001,
  beta_end: float = 0.02,
  set_alpha_to_one: bool = True,
) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      type="discrete",
      beta_schedule=beta_schedule,
      num_train_steps=num_train_steps,
      beta_start=beta_start,
      beta_end=beta_end,
      set_alpha_to_one=set_alpha_to_one,
      name="",
    )
  )


def base_config() -> ml_collections.ConfigDict:
  """Every section with defaults; the teacher section is left to configs."""
  c = ml_collections.ConfigDict()
  c.teacher = ml_collections.ConfigDict(dict(name=""))

  c.student = ml_collections.ConfigDict()
  # 'teacher': copy the teacher's network and weights; 'fresh': a new
  # network from student.model (the only choice for analytic teachers).
  c.student.init = "teacher"
  c.student.parameterization = "auto"
  c.student.space = "signal"
  c.student.model = ml_collections.ConfigDict(dict(name="mlp"))

  c.boot = ml_collections.ConfigDict()
  c.boot.num_steps = 32  # N, the time grid
  c.boot.spacing = "uniform"  # or 'lambda'
  c.boot.boundary_weight = 1.0  # beta
  c.boot.boundary_target = "teacher"  # or 'ddim'
  c.boot.guidance = placeholder(float)  # w; None: no guidance
  c.boot.weighting = "inv_delta_sq"  # or 'none'
  c.boot.weight_clip = placeholder(float)
  # Coarse-to-fine grids: stage k of `curriculum_stages` trains on
  # N / 2^(stages - 1 - k) steps, for an equal share of the run.
  c.boot.curriculum_stages = 1

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = placeholder(float)  # None: no EMA

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 256
  c.train.seed = 0
  c.train.log_every = 100
  c.train.ckpt_every = 1000
  c.train.eval_every = 1000

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 4000
  c.eval.seed = 12345
  c.eval.batch_size = 1000
  return c


def validate(config) -> None:
  """Raises ValueError with a one-line reason for bad values."""
  checks = [
    (
      config.train.steps >= 0,
      f"train.steps must be >= 0, got {config.train.steps}",
    ),
    (
      config.train.batch_size > 0,
      f"train.batch_size must be positive, got {config.train.batch_size}",
    ),
    (
      config.boot.num_steps >= 1,
      f"boot.num_steps must be >= 1, got {config.boot.num_steps}",
    ),
    (
      config.boot.boundary_weight >= 0,
      f"boot.boundary_weight must be >= 0, got {config.boot.boundary_weight}",
    ),
    (
      config.boot.guidance is None or config.boot.guidance >= 0,
      f"boot.guidance must be >= 0, got {config.boot.guidance}",
    ),
    (
      config.boot.curriculum_stages >= 1,
      "boot.curriculum_stages must be >= 1, got "
      f"{config.boot.curriculum_stages}",
    ),
    (
      config.train.log_every > 0,
      f"train.log_every must be positive, got {config.train.log_every}",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
