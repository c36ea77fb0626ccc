"""Config defaults shared by configs/*.py, and their validation.

`base_config()` has every section with its defaults: `teacher`, `student`,
`boot`, `optim`, `train`, `mesh`, `sharding`, `eval` (README.md's Configs
section lists the keys); `discrete_schedule()` builds a DDPM schedule
section; `validate()` checks a resolved config, `freeze()` turns it into
the read-only `Settings` that library code receives, and
`RESUMABLE_CHANGES` names the keys that may change when a run continues in
the same work directory.

The ready-made configs that configs/*.py start from (the digits demo, Stable
Diffusion, random test teachers, `TEACHER_RECIPES`) live in
`boot_jax.config.recipes`, which builds on `base_config`.
"""

from __future__ import annotations

import copy
import math

import ml_collections
from ml_collections.config_dict import placeholder

# Logical axis name -> mesh axis (or None: never split). The defaults of
# `config.sharding.rules`; names missing from the rules are not split.
DEFAULT_RULES = (
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("conv_out", "fsdp"),
  ("conv_in", None),
  ("conv_h", None),
  ("conv_w", None),
  ("norm", "fsdp"),
  ("classes", None),
)

# The attention implementations `model.attention` may name
# (models/attention.py holds them).
ATTENTION_IMPLEMENTATIONS = ("auto", "plain", "chunked", "cudnn", "pallas")

# What `model.remat` may name: 'auto' follows `train.remat` (true: 'block',
# false: 'none'); 'block' keeps only each block's inputs for the backward
# pass, 'dots' its dense layers' outputs too (models/layers.py: rematted).
REMAT_POLICIES = ("auto", "none", "block", "dots")


def discrete_schedule(
  beta_schedule: str = "linear",
  num_train_steps: int = 1000,
  beta_start: float = 0.0001,
  beta_end: float = 0.02,
  set_alpha_to_one: bool = True,
) -> ml_collections.ConfigDict:
  """A schedule section holding a DDPM table (`named_schedule` turns it
  into another schedule; `diffusion.make_schedule` reads it)."""
  return ml_collections.ConfigDict(
    dict(
      type="discrete",
      beta_schedule=beta_schedule,
      num_train_steps=num_train_steps,
      beta_start=beta_start,
      beta_end=beta_end,
      set_alpha_to_one=set_alpha_to_one,
      # Continuous schedules: 'cosine', 'linear' or 'rectified_flow'.
      name="",
      # rectified_flow: the sampler's time shift (None: 1, no shift).
      shift=placeholder(float),
    )
  )


# What `--config.teacher.schedule=NAME` (and `--config.diffusion.schedule`)
# may name: the DDPM tables (their beta range stays the section's) and the
# continuous paths (docs/method.md).
DISCRETE_SCHEDULE_NAMES = ("linear", "scaled_linear", "squaredcos_cap_v2")
CONTINUOUS_SCHEDULE_NAMES = ("cosine", "rectified_flow")
SCHEDULE_NAMES = DISCRETE_SCHEDULE_NAMES + CONTINUOUS_SCHEDULE_NAMES


def named_schedule(section, name: str) -> None:
  """Makes a schedule section (in place) the schedule called `name`.

  A DDPM table name keeps the section's table length and beta range; a
  continuous name keeps its `shift` and `num_train_steps` (the rectified
  flow's smallest sampler time is `1 / num_train_steps`).
  """
  if name in DISCRETE_SCHEDULE_NAMES:
    section.type = "discrete"
    section.beta_schedule = name
    section.name = ""
  elif name in CONTINUOUS_SCHEDULE_NAMES:
    section.type = "continuous"
    section.name = name
  else:
    raise ValueError(
      f"unknown schedule {name!r}; expected one of {SCHEDULE_NAMES}"
    )


def network_time_scale(schedule_type: str) -> float:
  """What a fresh network multiplies its times by before the sinusoids:
  1 for DDPM timesteps (0 to T - 1), 1000 for continuous times in [0, 1]
  (the rectified flow's network timestep is `1000 t`, as diffusers')."""
  return 1.0 if schedule_type == "discrete" else 1000.0


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
  # How each example's grid step is drawn: 'uniform', or 'clean' (step i
  # with probability proportional to 1 / i; boot_jax/distill/boot.py).
  c.boot.time_sampling = "uniform"
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
  # After BOOT's train.steps, refine.steps of data-free score identity
  # distillation (boot_jax/refine.py, docs/method.md).
  c.boot.refine = False
  c.refine = ml_collections.ConfigDict(dict(REFINE_DEFAULTS))
  # A BOOT work directory whose latest student (EMA when kept) starts this
  # run's student, for refining a finished BOOT run in a new directory.
  c.refine.init_from = placeholder(str)
  # The teacher's guidance inside the phase (None: boot.guidance; 1: the
  # conditional teacher unguided, as SiD distils class-conditional models).
  c.refine.guidance = placeholder(float)

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
  # The data-free progress signal logged every log_every steps (probe_mse,
  # probe_mmd2: boot_jax/evaluation/probe.py) on min(probe_samples,
  # batch_size) held-out noises: the student's pairs against the teacher's
  # DDIM-N, its distribution against the teacher's DDIM with
  # probe_fine_factor x N steps (1: DDIM-N too). 0 samples (or a batch
  # under 16): no probe.
  c.train.probe_samples = 256
  c.train.probe_fine_factor = 16
  c.train.ckpt_every = 1000
  c.train.eval_every = 1000
  c.train.keep_checkpoints = 3
  # 'stop': a non-finite loss or gradient stops the run (the last good
  # checkpoint is kept); 'skip': such steps change nothing and are counted.
  c.train.nan_policy = "stop"
  # With nan_policy 'skip': the run fails once more than this fraction of
  # its steps were skipped (a run that mostly skips is not training).
  c.train.max_skipped_fraction = 0.01
  # Continue in a work directory whose config.json differs (beyond the
  # keys in RESUMABLE_CHANGES) only when this is set.
  c.train.allow_config_change = False

  # 'bfloat16': the networks compute in bf16 while parameters, optimizer
  # state and the BOOT target arithmetic stay float32.
  c.train.compute_dtype = "float32"
  # Rematerialise the student's blocks in the backward pass (less memory,
  # about one more forward pass of compute).
  c.train.remat = False

  # How the networks compute, without changing their parameters: the
  # attention implementation (boot_jax.models.attention): 'auto' (cuDNN
  # flash on GPU, Pallas flash on TPU, query-chunked elsewhere), 'chunked',
  # 'plain' (the full score matrix), 'cudnn' or 'pallas'.
  # The rematerialisation policy of the student's blocks in the backward
  # pass (REMAT_POLICIES; measured in docs/text_to_image.md).
  c.model = ml_collections.ConfigDict(dict(attention="auto", remat="auto"))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict()
  # [logical axis name, mesh axis or None] pairs (see boot_jax.sharding).
  c.sharding.rules = [list(r) for r in DEFAULT_RULES]
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
  # Images in the PNG grid drawn at every evaluation of an image run.
  c.eval.grid_size = 64
  # The image report (evaluation/evaluator.py): the teacher's DDIM step
  # counts it measures, those the student is compared with on the same
  # noise, and the hybrid sampler's.
  c.eval.ddim_steps = (1, 2, 4, 10, 25, 50)
  c.eval.agreement_steps = (10, 25, 50)
  c.eval.hybrid_steps = (2, 4)
  c.eval.batch_size = 1000
  # Evaluate at the end of `train` (reads the real data for FID where the
  # teacher has any; distillation itself never does).
  c.eval.final = True
  # Guidance for sampling and evaluation (None: the training config's w;
  # a guidance-conditioned student is evaluated at `guidance_scales`, by
  # default the ends and middle of boot.guidance_range).
  c.eval.guidance = placeholder(float)
  c.eval.guidance_scales = placeholder(tuple)
  # Inception FID, KID and precision/recall at every evaluation of an image
  # run, on `inception_samples` one-step samples, when both files are set
  # (FID Inception weights; `python -m boot_jax.fid_stats` statistics).
  c.eval.inception = placeholder(str)
  c.eval.reference = placeholder(str)
  c.eval.inception_samples = 256
  # Draw the teacher's DDIM grid on the student grid's noise at the first
  # evaluation of a work directory (costly for large teachers on a CPU).
  c.eval.teacher_grid = True
  return c


# The refinement phase's settings (`refine.*`; boot_jax/refine.py): SiD's
# alpha and noise levels (EDM sigma_min/max, rho, the fraction t_max of
# the range drawn), the fake network's log-normal levels and sigma_data,
# Adam (b1, b2) with lr for the student and fake_lr for the fake network,
# fake_warmup steps in which only the fake network trains, guide_fake
# (guide the fake network with the teacher's w, as SiD-LSG), boot_weight
# (BOOT's own loss on the phase's batch, times this, added to the
# student's: it keeps the student near the teacher's DDIM-N map), and the
# seed of the phase's noise; `init_from` (base_config) names a BOOT run to
# start from.
REFINE_DEFAULTS = dict(
  steps=1000,
  alpha=1.2,
  lr=1e-5,
  fake_lr=1e-5,
  b1=0.0,
  b2=0.999,
  sigma_min=0.002,
  sigma_max=80.0,
  rho=7.0,
  t_max=0.8,
  fake_p_mean=-1.2,
  fake_p_std=1.2,
  sigma_data=0.5,
  fake_warmup=0,
  guide_fake=True,
  boot_weight=0.0,
  seed=1,
)


# The student's step of a refinement whose `refine.lr` is None (the
# mixture family's): this times sqrt(d / 2), d the dimension of the data
# (docs/ablations.md: measured on the 2-D and 8-D sweep mixtures and the
# 16-D preset).
DIMENSION_LR = 1e-6


def dimension_lr(teacher) -> float:
  """`DIMENSION_LR * sqrt(d / 2)` for a teacher section naming its data's
  dimension d (`teacher.dim`)."""
  dim = (teacher or {}).get("dim")
  if not dim or int(dim) < 1:
    raise ValueError(
      "refine.lr is unset, which scales it by the data's dimension: the "
      "teacher has no teacher.dim, so set refine.lr"
    )
  return DIMENSION_LR * math.sqrt(int(dim) / 2)


def resolve_unset(flat: dict) -> dict:
  """A flattened config ("a.b" keys) with its unset keys that follow
  other keys filled in (`refine.lr` from `teacher.dim`, a fresh student's
  `student.model.time_scale` from the teacher's schedule), so that a run
  saved with the value and one asking for the default compare equal."""
  out = dict(flat)
  key = "student.model.time_scale"
  if key in out and out[key] is None:
    out[key] = network_time_scale(out.get("teacher.schedule.type", "discrete"))
  if "refine.lr" in out and out["refine.lr"] is None:
    try:
      out["refine.lr"] = dimension_lr({"dim": out.get("teacher.dim")})
    except (TypeError, ValueError):
      pass
  return out


# Keys that may change between runs in one work directory (longer training,
# other logging or evaluation); everything else must match config.json.
RESUMABLE_CHANGES = (
  "train.steps",
  "refine.steps",
  "train.log_every",
  "train.ckpt_every",
  "train.eval_every",
  "train.keep_checkpoints",
  "train.max_skipped_fraction",
  "train.allow_config_change",
  "train.probe_samples",
  "train.probe_fine_factor",
  "eval.",
  # How attention and the backward pass are computed (the parameters are
  # the same).
  "model.attention",
  "model.remat",
  "train.remat",
  # Where prepared prompt files are kept.
  "teacher.prompt_cache",
  # The device layout: checkpoints restore onto any mesh.
  "mesh.",
  "sharding.",
)


MAX_SEED = 2**63 - 1
# How each example's BOOT grid step i (1 = the step onto the clean end) is
# drawn: uniformly, or with probability proportional to 1 / i ('clean':
# the steps nearest the clean end drawn most). 'clean' reweights the
# steps' terms of the objective; its exact solution is the same.
TIME_SAMPLINGS = ("uniform", "clean")


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
  return _number(value) and math.isfinite(value)


def validate_optim(o) -> None:
  """Checks the `optim` section (one-line errors naming the key)."""
  ema = o.get("ema_decay")
  checks = [
    (
      _finite(o.lr) and o.lr > 0,
      f"optim.lr must be finite and > 0, got {o.lr}",
    ),
    (
      o.get("schedule", "constant") in ("constant", "cosine"),
      f"optim.schedule must be 'constant' or 'cosine', got "
      f"{o.get('schedule')!r}",
    ),
    (
      isinstance(o.warmup_steps, int) and o.warmup_steps >= 0,
      f"optim.warmup_steps must be an integer >= 0, got {o.warmup_steps}",
    ),
    (
      _finite(o.get("final_lr_fraction", 0.0))
      and 0 <= o.get("final_lr_fraction", 0.0) <= 1,
      "optim.final_lr_fraction must be in [0, 1], got "
      f"{o.get('final_lr_fraction')}",
    ),
    (
      _finite(o.b1) and 0 <= o.b1 < 1,
      f"optim.b1 must be in [0, 1), got {o.b1}",
    ),
    (
      _finite(o.b2) and 0 <= o.b2 < 1,
      f"optim.b2 must be in [0, 1), got {o.b2}",
    ),
    (
      _finite(o.eps) and o.eps > 0,
      f"optim.eps must be finite and > 0, got {o.eps}",
    ),
    (
      _finite(o.weight_decay) and o.weight_decay >= 0,
      f"optim.weight_decay must be finite and >= 0, got {o.weight_decay}",
    ),
    (
      o.grad_clip is None or (_finite(o.grad_clip) and o.grad_clip >= 0),
      "optim.grad_clip must be finite and >= 0 (0 or None: no clipping), "
      f"got {o.grad_clip}",
    ),
    (
      # 1 would keep the initial weights for ever: the EMA never moves.
      ema is None or (_finite(ema) and 0 <= ema < 1),
      f"optim.ema_decay must be in [0, 1) (None: no EMA), got {ema}",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


def validate_seed(name: str, value) -> None:
  """A seed is an integer in [0, 2^63 - 1]."""
  if not (isinstance(value, int) and not isinstance(value, bool)) or not (
    0 <= value <= MAX_SEED
  ):
    raise ValueError(f"{name} must be an integer in [0, 2^63 - 1], got {value}")


def validate_train(t) -> None:
  """Checks the `train` keys every trainer shares (one-line errors)."""
  checks = [
    (t.steps >= 0, f"train.steps must be >= 0, got {t.steps}"),
    (
      t.batch_size > 0,
      f"train.batch_size must be positive, got {t.batch_size}",
    ),
    (t.log_every > 0, f"train.log_every must be positive, got {t.log_every}"),
    (
      t.get("ckpt_every", 0) >= 0,
      f"train.ckpt_every must be >= 0 (0: only at the end), got "
      f"{t.get('ckpt_every')}",
    ),
    (
      t.get("eval_every", 0) >= 0,
      f"train.eval_every must be >= 0 (0: never), got {t.get('eval_every')}",
    ),
    (
      _integer(t.get("probe_samples", 0)) and t.get("probe_samples", 0) >= 0,
      "train.probe_samples must be an integer >= 0 (0: no probe), got "
      f"{t.get('probe_samples')}",
    ),
    (
      _integer(t.get("probe_fine_factor", 1))
      and 1 <= t.get("probe_fine_factor", 1) <= 64,
      "train.probe_fine_factor must be an integer in [1, 64] (1: DDIM-N), "
      f"got {t.get('probe_fine_factor')}",
    ),
    (
      t.get("keep_checkpoints", 1) >= 1,
      "train.keep_checkpoints must be >= 1 (the newest checkpoint is always "
      f"kept), got {t.get('keep_checkpoints')}",
    ),
    (
      0.0 <= t.get("max_skipped_fraction", 0.0) <= 1.0,
      "train.max_skipped_fraction must be in [0, 1], got "
      f"{t.get('max_skipped_fraction')}",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  validate_seed("train.seed", t.seed)


def validate(config) -> None:
  """Raises ValueError with a one-line reason for bad values."""
  validate_train(config.train)
  validate_optim(config.optim)
  validate_seed("eval.seed", config.eval.seed)
  if config.get("refine") is not None and "seed" in config.refine:
    validate_seed("refine.seed", config.refine.seed)
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
      config.boot.get("time_sampling", "uniform") in TIME_SAMPLINGS,
      f"boot.time_sampling must be one of {TIME_SAMPLINGS}, got "
      f"{config.boot.get('time_sampling')!r}",
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
  impl = attention(config)
  if impl not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
      f"model.attention={impl!r}: expected one of {ATTENTION_IMPLEMENTATIONS}"
    )
  policy = (config.get("model") or {}).get("remat") or "auto"
  if policy not in REMAT_POLICIES:
    raise ValueError(
      f"model.remat={policy!r}: expected one of {REMAT_POLICIES}"
    )


class Settings(ml_collections.FrozenConfigDict):
  """A run's configuration after `freeze`: validated once, read-only.

  The programs build it at start; everything below them reads it (keys as
  attributes, `.get` for optional ones) and none can change it: assigning
  raises, and a key that is not there raises AttributeError. A step that
  derives values (a teacher's resolved fields) returns a new `Settings`.
  """


def _kind(value) -> str | None:
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, int):
    return "int"
  if isinstance(value, float):
    return "float"
  if isinstance(value, str):
    return "str"
  if isinstance(value, (list, tuple)):
    return "sequence"
  return None


_KIND_WORDS = dict(
  bool="true or false",
  int="an integer",
  float="a number",
  str="a string",
  sequence="a list",
)


def check_types(config, declared=None, prefix: str = "") -> None:
  """Each value has its declared default's type (one-line error naming it).

  Only keys with a non-empty default in `declared` (default: `base_config()`)
  are checked; an integer stands for a float. Sections that vary by family
  (`teacher`, `student.model`) are checked by their families.
  """
  if declared is None:
    declared = base_config()
  for key, default in declared.items():
    name = prefix + key
    if name in ("teacher", "student.model") or key not in config:
      continue
    value = config[key]
    if isinstance(default, ml_collections.ConfigDict):
      if isinstance(value, ml_collections.ConfigDict):
        check_types(value, default, name + ".")
      continue
    want, got = _kind(default), _kind(value)
    if want is None or value is None or got == want:
      continue
    if want == "float" and got == "int":
      continue
    raise ValueError(f"{name} must be {_KIND_WORDS[want]}, got {value!r}")


def freeze(config, validator=None, declared=None) -> Settings:
  """Validates `config` once and returns it as read-only `Settings`.

  Args:
    config: a resolved ConfigDict (or `Settings`, returned as it is: it was
      validated when it was made).
    validator: the checks to run (default: `validate`, BOOT's); the teacher
      trainer passes its own.
    declared: the config whose default values give each key's type
      (default: `base_config()`).

  Raises:
    ValueError: one line naming the first bad key.
  """
  if isinstance(config, Settings):
    return config
  check_types(config, declared)
  (validator or validate)(config)
  return Settings(config)


def derive(config: Settings, **sections) -> Settings:
  """`config` with whole sections replaced by values derived from it.

  For fields a step computes from validated settings (a teacher's
  resolved arrays, an evaluation's sample count); not validated again.
  The result has `config`'s type (a subclass marks a further step done).
  """
  new = thaw(config)
  for name, section in sections.items():
    new[name] = section
  return type(config)(new) if isinstance(config, Settings) else Settings(new)


def thaw(config) -> ml_collections.ConfigDict:
  """A mutable copy (of `Settings` or a ConfigDict) to derive a new one."""
  if isinstance(config, ml_collections.FrozenConfigDict):
    # as_configdict() shares the ConfigDict the view was made from.
    return copy.deepcopy(config.as_configdict())
  return copy.deepcopy(config)


def attention(config) -> str:
  """The configured attention implementation ('auto' when unset)."""
  section = config.get("model") or {}
  return section.get("attention") or "auto"


def remat(config) -> str:
  """The student's rematerialisation policy: 'none', 'block' or 'dots'
  (`model.remat`; 'auto' or unset: 'block' when `train.remat`)."""
  policy = (config.get("model") or {}).get("remat") or "auto"
  if policy == "auto":
    return "block" if (config.get("train") or {}).get("remat") else "none"
  return policy


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
