"""Config defaults shared by configs/*.py, and their validation.

Sections (DESIGN.md): `teacher`, `student`, `boot`, `optim`, `train`,
`mesh`, `eval`. Files in configs/ start from `base_config()` and override.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from boot_jax import sharding as sharding_defaults


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
  # (w_min, w_max): a guidance-conditioned student. Each example draws w
  # uniformly from the range; the teacher guides with it and the student
  # reads it through an extra zero-initialised embedding, so one student
  # serves any w in the range. Excludes boot.guidance.
  c.boot.guidance_range = placeholder(tuple)
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
  c.train.keep_checkpoints = 3
  # 'stop': a non-finite loss or gradient stops the run (the last good
  # checkpoint is kept); 'skip': such steps change nothing and are counted.
  c.train.nan_policy = "stop"
  # Continue in a work directory whose config.json differs (beyond the
  # keys in RESUMABLE_CHANGES) only when this is set.
  c.train.allow_config_change = False

  # 'bfloat16': the networks compute in bf16 while parameters, optimizer
  # state and the BOOT target arithmetic stay float32.
  c.train.compute_dtype = "float32"
  # Rematerialise the student's blocks in the backward pass (less memory,
  # about one more forward pass of compute).
  c.train.remat = False

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict()
  # [logical axis name, mesh axis or None] pairs (see boot_jax.sharding).
  c.sharding.rules = [list(r) for r in sharding_defaults.DEFAULT_RULES]
  # Split an unnamed (or rule-unsplit) parameter's largest divisible
  # dimension over fsdp.
  c.sharding.fsdp_fallback = True
  # The frozen teacher: 'replicate', 'fsdp', or 'auto' (fsdp above
  # replicate_teacher_below_mb of parameters).
  c.sharding.teacher = "auto"
  c.sharding.replicate_teacher_below_mb = 1024.0

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 4000
  c.eval.seed = 12345
  c.eval.batch_size = 1000
  # Evaluate at the end of `train` (reads the real data for FID where the
  # teacher has any; distillation itself never does).
  c.eval.final = True
  # Guidance for sampling and evaluation (None: the training config's w;
  # a guidance-conditioned student is evaluated at `guidance_scales`, by
  # default the ends and middle of boot.guidance_range).
  c.eval.guidance = placeholder(float)
  c.eval.guidance_scales = placeholder(tuple)
  return c


# Keys that may change between runs in one work directory (longer training,
# other logging or evaluation); everything else must match config.json.
RESUMABLE_CHANGES = (
  "train.steps",
  "train.log_every",
  "train.ckpt_every",
  "train.eval_every",
  "train.keep_checkpoints",
  "train.allow_config_change",
  "eval.",
  # The device layout: checkpoints restore onto any mesh.
  "mesh.",
  "sharding.",
)


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
    (
      config.train.get("nan_policy", "stop") in ("stop", "skip"),
      "train.nan_policy must be 'stop' or 'skip', got "
      f"{config.train.get('nan_policy')!r}",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  validate_guidance_range(config.boot)


def validate_guidance_range(boot) -> None:
  r = boot.get("guidance_range")
  if r is None:
    return
  if boot.get("guidance") is not None:
    raise ValueError(
      "set boot.guidance (one fixed w) or boot.guidance_range (a "
      "guidance-conditioned student), not both"
    )
  if len(r) != 2 or not 0 <= float(r[0]) <= float(r[1]):
    raise ValueError(
      f"boot.guidance_range must be (w_min, w_max) with 0 <= w_min <= "
      f"w_max, got {tuple(r)}"
    )


def digits_unet() -> ml_collections.ConfigDict:
  """The demo's UNet on 8x8 digits: attention only at 4x4.

  16 base channels (256K parameters) is what fits the 10-minute CPU demo:
  a forward pass costs about 0.38 ms per image on 2 cores.
  """
  return ml_collections.ConfigDict(
    dict(
      name="unet",
      channels=16,
      channel_mult=(1, 2),
      num_res_blocks=2,
      attention_resolutions=(4,),
      num_heads=2,
      groups=8,
      dropout=0.0,
      time_scale=1.0,
      remat=False,
    )
  )


def digits_teacher_config(conditional: bool = False):
  """Teacher training on scikit-learn's digits (configs/digits_teacher.py)."""
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(
    dict(source="digits", image_size=8, channels=1, path="", labels_path="")
  )
  c.num_classes = 10 if conditional else 0
  c.label_dropout = 0.1 if conditional else 0.0
  c.model = digits_unet()
  c.diffusion = ml_collections.ConfigDict(
    dict(
      schedule=discrete_schedule("squaredcos_cap_v2"),
      prediction="v",
    )
  )
  c.optim = ml_collections.ConfigDict(
    dict(
      lr=2e-3,
      schedule="cosine",
      warmup_steps=200,
      final_lr_fraction=0.05,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip=1.0,
      ema_decay=0.999,
    )
  )
  c.train = ml_collections.ConfigDict(
    dict(
      steps=2500,
      batch_size=128,
      seed=0,
      log_every=250,
      ckpt_every=500,
      eval_every=2500,
      keep_checkpoints=2,
      nan_policy="stop",
      allow_config_change=False,
    )
  )
  c.eval = ml_collections.ConfigDict(
    dict(grid_size=64, ddim_steps=50, seed=0, guidance=placeholder(float))
  )
  return c


# Teacher-training recipes that `train` can run itself when a BOOT config's
# teacher.path holds no trained teacher (see configs/digits.py).
TEACHER_RECIPES = {
  "digits": lambda: digits_teacher_config(conditional=False),
  "digits_cond": lambda: digits_teacher_config(conditional=True),
}


def pixel_boot_config(recipe: str) -> ml_collections.ConfigDict:
  """A BOOT run on our own pixel teacher trained by `recipe`.

  The teacher's network, schedule and prediction are left unset (None)
  and read from the teacher's own config.json when the run starts.
  """
  c = base_config()
  t = c.teacher = ml_collections.ConfigDict()
  t.name = "unet"
  t.path = "teacher"  # relative paths live inside the work directory
  t.recipe = recipe
  t.init = "checkpoint"
  t.seed = 0
  t.model = None
  t.schedule = None
  t.prediction = None
  t.sample_shape = None
  t.num_classes = None
  t.label_logits = None
  c.student.init = "teacher"
  return c


def digits_boot_config(recipe: str = "digits") -> ml_collections.ConfigDict:
  """The demo's BOOT run on a digits teacher (configs/digits*.py).

  The teacher's table (squaredcos_cap_v2) has alpha_T = 4.9e-5: the first
  DDIM step already lands on f(eps, T), so the boundary term carries no
  information (docs/ablations.md measured no effect even at 0.0064) and
  would cost a third of each step.
  """
  c = pixel_boot_config(recipe)
  c.boot.num_steps = 16
  c.boot.boundary_weight = 0.0
  c.optim.lr = 2e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.1
  c.optim.ema_decay = 0.995
  c.train.steps = 4000
  c.train.batch_size = 32
  c.train.log_every = 250
  c.train.ckpt_every = 500
  c.train.eval_every = 2000
  c.eval.num_samples = 2000
  c.eval.batch_size = 500
  c.eval.grid_size = 64
  c.eval.ddim_steps = (1, 2, 4, 10, 25, 50)
  c.eval.agreement_steps = (10, 25, 50)
  c.eval.hybrid_steps = (2, 4)
  return c


def sd_boot_config(resolution: int, prediction: str):
  """BOOT on a Stable Diffusion teacher (configs/sd*.py), from prompts only.

  The teacher folder and the prompt file are the user's: set
  `teacher.path` and `teacher.prompts` on the command line.
  """
  c = base_config()
  c.teacher = ml_collections.ConfigDict(
    dict(
      name="sd",
      path="",
      resolution=resolution,
      prediction=prediction,
      prompts="",
      prompt_column="prompt",
      prompt_cache="",
      negative_prompt="",
    )
  )
  c.student.init = "teacher"
  c.boot.num_steps = 32
  c.boot.guidance = 7.5
  c.optim.lr = 1e-5
  c.optim.warmup_steps = 500
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999
  c.train.steps = 20000
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.ckpt_every = 1000
  c.train.eval_every = 1000
  c.train.compute_dtype = "bfloat16"
  c.train.remat = True
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.sharding.teacher = "auto"
  # No reference images exist (data free): the final evaluation would only
  # compare with the teacher's DDIM in latent space; run it on demand.
  c.eval.final = False
  c.eval.num_samples = 64
  c.eval.batch_size = 8
  c.eval.grid_size = 16
  c.eval.ddim_steps = (4, 25)
  c.eval.agreement_steps = (25,)
  c.eval.hybrid_steps = ()
  return c


def random_unet_teacher(
  model: dict,
  sample_shape,
  prediction: str = "v",
  schedule=None,
  num_classes: int = 0,
) -> ml_collections.ConfigDict:
  """A `teacher` section for our UNet with random weights (`init=random`).

  For tests and benchmarks that need a teacher of a given size and shape,
  not a good one.
  """
  return ml_collections.ConfigDict(
    dict(
      name="unet",
      init="random",
      seed=0,
      path="",
      model=dict(model),
      schedule=schedule or discrete_schedule("squaredcos_cap_v2"),
      prediction=prediction,
      sample_shape=list(sample_shape),
      num_classes=num_classes,
    )
  )
