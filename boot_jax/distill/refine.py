r"""The optional refinement phase after BOOT: data-free score identity
distillation (SiD; docs/method.md, "Refinement").

BOOT fits the student to the teacher's DDIM-N map, so it inherits that
sampler's error. The refinement instead matches the distribution of the
student's one-step samples `x_g = g(eps)` to the teacher's, reading only
noise (and conditions), like BOOT:

* a fake score network `f_psi` (a copy of the teacher: its network and
  weights; for the analytic mixture a mixture of 8 copies of each
  component plus a gated `student.model` network, see `build_fake`)
  learns the denoising
  x0-prediction of the student's own samples,

      L_psi = E[ w_f(s) || f_psi(x_s, s) - sg(x_g) ||^2 ],
      x_s = alpha_s x_g + sigma_s n,
      w_f(s) = (r^2 + sd^2) / (r sd)^2,  r = sigma_s / alpha_s,

  with `log r ~ N(fake_p_mean, fake_p_std^2)` and `sd = sigma_data`;
* the student follows SiD's generator loss at a noise level `t`, with the
  teacher's (guided) x0-prediction `f_phi` and the fake network's,

      L_g = E[ (f_phi - f_psi) . ((f_phi - x_g) - alpha (f_phi - f_psi))
               / sg(mean |x_g - f_phi|) ],

  both evaluated at `x_t = alpha_t x_g + sigma_t n` (gradients reach the
  student through `x_g` and `x_t`, never the two networks' weights; with
  `refine.guide_fake` the fake network is guided with the teacher's `w`
  in both losses, as SiD-LSG; `refine.guidance` sets that `w`), and
  `r = sigma_t / alpha_t` drawn as SiD draws its EDM noise levels:
  `r = (r_max^(1/rho) + (1 - u) (r_min^(1/rho) - r_max^(1/rho)))^rho`,
  `u ~ U[0, t_max]`.

Noise-to-signal ratios `r` become the teacher's own times through its
schedule (`time_of`: the time whose `sigma / alpha` is `r`, rounded to the
nearest timestep for discrete teachers), and the losses use that time's
actual `alpha` and `sigma`.

One refinement step updates the fake network on a batch of the student's
samples, then the student against the updated fake network (SiD's
alternation), each with its own Adam; both live in the train state
(`TrainState.refine`) beside the student's BOOT optimizer state, so
checkpoints, resume, FSDP and the NaN policy cover them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from boot_jax.config import defaults
from boot_jax.diffusion import predictions
from boot_jax.distill import state as state_lib
from boot_jax.distill import student as student_lib
from boot_jax.teachers import gmm

DEFAULTS = defaults.REFINE_DEFAULTS


def settings(config) -> dict:
  """`config.refine` over `DEFAULTS` (unknown keys refused)."""
  section = dict(config.get("refine") or {})
  section.pop("init_from", None)
  section.pop("guidance", None)
  unknown = sorted(set(section) - set(DEFAULTS))
  if unknown:
    raise ValueError(
      f"unknown refine settings {unknown}; known: {sorted(DEFAULTS)}"
    )
  out = {**DEFAULTS, **section}
  if out["lr"] is None:
    out["lr"] = defaults.dimension_lr(config.get("teacher"))
  checks = (
    (int(out["steps"]) >= 0, "refine.steps must be >= 0"),
    (0.0 < float(out["t_max"]) <= 1.0, "refine.t_max must be in (0, 1]"),
    (0.0 < float(out["sigma_min"]) < float(out["sigma_max"]),
     "refine needs 0 < sigma_min < sigma_max"),
    (all(0 < float(out[k]) < math.inf for k in ("lr", "fake_lr")),
     "refine.lr and refine.fake_lr must be finite and > 0"),
    (int(out["fake_warmup"]) >= 0, "refine.fake_warmup must be >= 0"),
    (0.0 <= float(out["boot_weight"]) < math.inf,
     "refine.boot_weight must be finite and >= 0"),
  )  # fmt: skip
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  return out


def enabled(config) -> bool:
  return bool(config.boot.get("refine", False))


def guidance(config):
  """The teacher's guidance in the phase: `refine.guidance`, else
  `boot.guidance` (None for w = 1: the conditional output is exact)."""
  w = (config.get("refine") or {}).get("guidance")
  if w is None:
    w = config.boot.get("guidance")
  if w is not None and not (math.isfinite(float(w)) and float(w) >= 0):
    raise ValueError(f"refine.guidance must be finite and >= 0, got {w}")
  return None if w is None or float(w) == 1.0 else float(w)


def init_from(config) -> str | None:
  """The BOOT work directory the student starts from, or None."""
  source = (config.get("refine") or {}).get("init_from")
  if source and not enabled(config):
    raise ValueError("refine.init_from needs boot.refine=true")
  return source or None


def total_steps(config) -> int:
  """BOOT's `train.steps`, plus `refine.steps` when the phase is on."""
  extra = int(settings(config)["steps"]) if enabled(config) else 0
  return int(config.train.steps) + extra


def time_table(schedule) -> tuple[np.ndarray, np.ndarray]:
  """`(log r, t)` over the schedule's times with finite `r = sigma/alpha`,
  ascending in both (float64)."""
  if schedule.kind == "discrete":
    ts = np.arange(schedule.num_train_steps, dtype=np.float64)
  else:
    ts = np.linspace(schedule.t_clean, schedule.t_max, 4097)
  alpha, sigma = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(ts))
  with np.errstate(divide="ignore"):
    log_r = np.log(sigma) - np.log(alpha)
  keep = np.isfinite(log_r)
  return log_r[keep], ts[keep]


def time_of(schedule, table, r):
  """The teacher's time whose `sigma / alpha` is `r` (clamped to the
  schedule's range; nearest timestep for discrete teachers)."""
  log_r, ts = (jnp.asarray(a, jnp.float32) for a in table)
  t = jnp.interp(jnp.log(r), log_r, ts)
  return jnp.round(t) if schedule.kind == "discrete" else t


def karras_ratio(u, cfg):
  """SiD's noise level at `u` in [0, 1]: u = 0 is `sigma_min`."""
  rho = float(cfg["rho"])
  lo = float(cfg["sigma_min"]) ** (1.0 / rho)
  hi = float(cfg["sigma_max"]) ** (1.0 / rho)
  return (hi + (1.0 - u) * (lo - hi)) ** rho


# The mixture's fake network: each teacher component as this many copies,
# means moved apart by this fraction of its std (docs/method.md).
MIXTURE_COPIES = 8
MIXTURE_JITTER = 0.01


@dataclasses.dataclass(frozen=True, eq=False)
class Fake:
  """The fake score network: `x0(params, x_t, t, cond, guidance=None)`
  (guided as the teacher guides), and the module whose logical names shard
  its parameters (None: replicated)."""

  x0: Any
  module: Any = None


def build_fake(teacher, student_config, key, dtype=None, remat=False,
               attention="auto"):  # fmt: skip
  """`(Fake, params_fn)`: the teacher, weights and all, to start from.

  A network teacher's fake network is the teacher's network (with the
  student's computation dtype, remat and attention) from its weights. The
  analytic mixture has no network: its fake is the exact x0-prediction of
  a richer mixture, each teacher component split into `MIXTURE_COPIES`
  trainable copies (`gmm.split_params`), plus a `student.model` network
  whose output is multiplied by a gate that starts at zero. A network
  fake starts with `f_psi = f_phi` exactly, as SiD's does; the mixture's
  within the copies' jitter (second order in `MIXTURE_JITTER`).
  """
  if teacher.module is None:
    k_net, k_split = jax.random.split(key)
    net, init_fn = student_lib.build_student(
      teacher, student_config, k_net, dtype=dtype
    )
    mixture = gmm.make_split_apply(
      teacher.schedule, teacher.condition.kind == "class"
    )

    def branch(params, x_t, t, cond):
      exact = mixture(params["mixture"], x_t, t, cond)
      return exact + params["gate"] * net.raw(params["net"], x_t, t, cond)

    def x0(params, x_t, t, cond=None, guidance=None):
      fn = lambda x, s, c: branch(params, x, s, c)  # noqa: E731
      return teacher.guide(fn, x_t, t, cond, guidance)

    def params_fn(tp):
      return dict(
        mixture=gmm.split_params(tp, MIXTURE_COPIES, MIXTURE_JITTER, k_split),
        net=init_fn(tp),
        gate=jnp.zeros(teacher.sample_shape, jnp.float32),
      )

    return Fake(x0), params_fn
  net, params_fn = student_lib.build_student(
    teacher,
    dict(init="teacher", parameterization="direct"),
    key,
    dtype=dtype,
    remat=remat,
    attention=attention,
  )

  def x0(params, x_t, t, cond=None, guidance=None):
    fn = lambda x, s, c: net.raw(params, x, s, c)  # noqa: E731
    out = teacher.guide(fn, x_t, t, cond, guidance)
    alpha, sigma = teacher.schedule.alpha_sigma(t)
    return predictions.to_x0(out, x_t, alpha, sigma, teacher.prediction)

  return Fake(x0, net.module), params_fn


def _per_example(a):
  return a.reshape(a.shape[0], -1)


def _noised(schedule, table, x, r, noise):
  t = time_of(schedule, table, r)
  alpha, sigma = schedule.alpha_sigma(t)
  b = (-1,) + (1,) * (x.ndim - 1)
  return t, alpha.reshape(b) * x + sigma.reshape(b) * noise, alpha, sigma


def fake_loss(fake, fake_params, schedule, table, x_g, cond, key, cfg,
              guidance=None):  # fmt: skip
  """`L_psi` on the student's samples `x_g` (held fixed); with `guidance`
  the fake network's guided prediction is the one fitted (SiD-LSG)."""
  k_r, k_n = jax.random.split(key)
  n = x_g.shape[0]
  r = jnp.exp(
    float(cfg["fake_p_mean"])
    + float(cfg["fake_p_std"]) * jax.random.normal(k_r, (n,))
  )
  noise = jax.random.normal(k_n, x_g.shape)
  t, x_s, alpha, sigma = _noised(schedule, table, x_g, r, noise)
  ratio = sigma / alpha  # the time's actual level, after rounding
  sd = float(cfg["sigma_data"])
  weight = (ratio**2 + sd**2) / (ratio * sd) ** 2
  err = _per_example(fake.x0(fake_params, x_s, t, cond, guidance) - x_g)
  return jnp.mean(weight * jnp.sum(err.astype(jnp.float32) ** 2, -1))


def generator_loss(params, fake_params, teacher_params, batch, key, parts):
  """`L_g` of the student's parameters, and metrics."""
  student, fake, teacher, cfg, guidance, table = parts
  eps, cond = batch["eps"], batch.get("cond")
  x_g = student.generate(params, eps, cond)
  k_u, k_n = jax.random.split(key)
  u = jax.random.uniform(k_u, (eps.shape[0],)) * float(cfg["t_max"])
  noise = jax.random.normal(k_n, x_g.shape)
  t, x_t, _, _ = _noised(
    student.schedule, table, x_g, karras_ratio(u, cfg), noise
  )
  real = teacher.x0(teacher_params, x_t, t, cond, guidance)
  fake_x0 = fake.x0(
    jax.lax.stop_gradient(fake_params),
    x_t,
    t,
    cond,
    fake_guidance(cfg, guidance),
  )
  real, fake_x0, x_g32 = (
    _per_example(a).astype(jnp.float32) for a in (real, fake_x0, x_g)
  )
  scale = jax.lax.stop_gradient(
    jnp.maximum(jnp.mean(jnp.abs(x_g32 - real), -1), 1e-5)
  )
  diff = real - fake_x0
  alpha = float(cfg["alpha"])
  per = jnp.sum(diff * ((real - x_g32) - alpha * diff), -1) / scale
  loss = jnp.mean(per)
  return loss, {"loss_sid": loss, "score_gap": jnp.mean(diff**2)}


def fake_guidance(cfg, guidance):
  """The w the fake network is guided with: the teacher's, with
  `refine.guide_fake` (SiD-LSG's choice), else none."""
  return guidance if bool(cfg["guide_fake"]) else None


def optimizers(cfg):
  """`(student's, fake's)` Adam of the phase."""
  b1, b2 = float(cfg["b1"]), float(cfg["b2"])
  return (
    optax.adam(float(cfg["lr"]), b1=b1, b2=b2),
    optax.adam(float(cfg["fake_lr"]), b1=b1, b2=b2),
  )


def init_refine(student_params, fake_params, cfg) -> dict:
  """The phase's part of the train state."""
  s_opt, f_opt = optimizers(cfg)
  return dict(
    fake=fake_params,
    fake_opt=f_opt.init(fake_params),
    student_opt=s_opt.init(student_params),
  )


def make_refine_step(student, fake, teacher, cfg, guidance, ema_decay,
                     nan_policy, boot_steps, boot_loss_fn=None):  # fmt: skip
  """The un-jitted step `(state, teacher_params, batch) -> (state,
  metrics)` of the refinement phase (its randomness folds in the step);
  `boot_loss_fn` (`step.make_loss_fn`'s) x `refine.boot_weight` joins the
  student's loss on the same batch."""
  boot_weight = float(cfg["boot_weight"])
  if boot_weight and boot_loss_fn is None:
    raise ValueError("refine.boot_weight > 0 needs BOOT's loss function")
  table = time_table(student.schedule)
  s_opt, f_opt = optimizers(cfg)
  parts = (student, fake, teacher, cfg, guidance, table)

  def student_loss(params, fake_params, teacher_params, batch, key):
    loss, metrics = generator_loss(
      params, fake_params, teacher_params, batch, key, parts
    )
    if boot_weight:
      boot_value, _ = boot_loss_fn(params, teacher_params, batch)
      metrics["loss_boot"] = boot_value
      loss = loss + boot_weight * boot_value
    return loss, metrics

  base_key = jax.random.key(int(cfg["seed"]))
  warmup = int(cfg["fake_warmup"])

  def step(state: state_lib.TrainState, teacher_params, batch):
    key = jax.random.fold_in(base_key, state.step)
    k_f, k_g = jax.random.split(key)
    r = state.refine
    cond = batch.get("cond")
    x_g = jax.lax.stop_gradient(
      student.generate(state.params, batch["eps"], cond)
    )
    f_value, f_grads = jax.value_and_grad(fake_loss, argnums=1)(
      fake, r["fake"], student.schedule, table, x_g, cond, k_f, cfg,
      fake_guidance(cfg, guidance),
    )  # fmt: skip
    f_updates, fake_opt = f_opt.update(f_grads, r["fake_opt"], r["fake"])
    fake_params = optax.apply_updates(r["fake"], f_updates)
    (g_value, metrics), g_grads = jax.value_and_grad(
      student_loss, has_aux=True
    )(state.params, fake_params, teacher_params, batch, k_g)
    g_updates, student_opt = s_opt.update(
      g_grads, r["student_opt"], state.params
    )
    # The fake network's warm-up: the student, its Adam and EMA wait.
    train_student = (state.step - boot_steps) >= warmup

    def unless_warming_up(new, old):
      return jax.tree.map(lambda n, o: jnp.where(train_student, n, o), new, old)

    params = unless_warming_up(
      optax.apply_updates(state.params, g_updates), state.params
    )
    student_opt = unless_warming_up(student_opt, r["student_opt"])
    f_norm, g_norm = optax.tree.norm(f_grads), optax.tree.norm(g_grads)
    finite = jnp.isfinite(f_value) & jnp.isfinite(g_value)
    finite &= jnp.isfinite(f_norm) & jnp.isfinite(g_norm)
    ema = state.ema_params
    if ema is not None:
      ema = unless_warming_up(state_lib.ema_update(ema, params, ema_decay), ema)
    proposed = state.replace(
      params=params,
      ema_params=ema,
      refine=dict(fake=fake_params, fake_opt=fake_opt, student_opt=student_opt),
    )
    new = state_lib.guard(state, proposed, finite, nan_policy)
    metrics.update(
      loss=g_value,
      loss_fake=f_value,
      grad_norm=g_norm,
      grad_norm_fake=f_norm,
      skipped=new.skipped,
    )
    return new, metrics

  return step


def refused(config, guided: bool) -> str | None:
  """Why `boot.refine` cannot run with this config, or None."""
  if guided:
    return (
      "boot.refine does not support guidance-conditioned students "
      "(boot.guidance_range): the fake network would need w too"
    )
  if config.student.get("space", "signal") != "signal":
    return "boot.refine needs student.space='signal'"
  return None
