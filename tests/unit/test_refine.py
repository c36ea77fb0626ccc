"""The refinement phase's parts (boot_jax/refine.py) against closed forms.

The phase as a whole runs in test_pipeline.py (data-free, init_from),
test_resume.py (SIGKILL inside the phase) and test_sharding.py (meshes).
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boot_jax.config import defaults, recipes
from boot_jax.diffusion import schedules
from boot_jax.distill import refine
from boot_jax.distill import step as step_lib
from boot_jax.distill import student as student_lib
from boot_jax.teachers import gmm
from boot_jax.training import trainer


@pytest.mark.parametrize(
  "schedule",
  [
    schedules.DiscreteSchedule.named("linear"),
    schedules.ContinuousSchedule("cosine"),
  ],
  ids=["discrete", "continuous"],
)
def test_time_of_inverts_the_schedule(schedule):
  """`time_of(r)` is the teacher time whose sigma/alpha is r."""
  table = refine.time_table(schedule)
  log_r = np.asarray(table[0])
  assert np.all(np.diff(log_r) > 0) and np.all(np.diff(table[1]) > 0)
  cfg = refine.DEFAULTS
  u = jnp.linspace(0.0, 1.0, 257)
  r = refine.karras_ratio(u, cfg)
  # SiD's levels: u = 0 is sigma_min, u = 1 sigma_max, increasing.
  np.testing.assert_allclose(r[0], cfg["sigma_min"], rtol=1e-5)
  np.testing.assert_allclose(r[-1], cfg["sigma_max"], rtol=1e-5)
  assert np.all(np.diff(np.asarray(r)) > 0)
  inside = (np.log(r) > log_r[0]) & (np.log(r) < log_r[-1])
  t = refine.time_of(schedule, table, r[inside])
  alpha, sigma = schedule.alpha_sigma(t)
  got = np.log(np.asarray(sigma, np.float64) / np.asarray(alpha, np.float64))
  want = np.log(np.asarray(r[inside], np.float64))
  if schedule.kind == "discrete":
    # Rounded to a timestep: at most one timestep's step in log r away
    # (adjacent steps of this schedule differ by < 0.07 in log r where
    # these levels fall; 0.5 would mean a wrong table).
    assert np.all(t == np.round(t))
    steps = np.abs(np.diff(log_r)).max()
    assert np.max(np.abs(got - want)) <= steps
  else:
    # 4,097 table points and float32 interpolation: 1e-3 in log r where
    # the schedule's float32 arithmetic resolves r (sigma = sqrt(1 -
    # alpha^2) with alpha within a few ulp of 1 is only good to ~3e-4
    # absolute, so below r = 0.01 the schedule itself is off by up to
    # ~3% in r, measured 0.026 in log r at r = 0.0035; 0.05 there).
    small = want < np.log(0.01)
    assert np.max(np.abs(got - want)[~small]) <= 1e-3
    assert np.max(np.abs(got - want)[small]) <= 0.05
  # Outside the schedule's range the time clamps to its ends.
  ends = refine.time_of(schedule, table, jnp.array([1e-9, 1e9]))
  np.testing.assert_allclose(ends, [table[1][0], table[1][-1]], rtol=1e-6)


def _gaussian_parts(schedule):
  """A 1-D generator `x = theta eps` with the exact fake score, and a
  teacher for the data N(0, 1): their x0-predictions in closed form."""

  def posterior(var, x, t):
    a, s = schedule.alpha_sigma(t)
    a, s = a[:, None], s[:, None]
    return a * var * x / (a**2 * var + s**2)

  student = types.SimpleNamespace(
    schedule=schedule, generate=lambda theta, eps, cond=None: theta * eps
  )
  teacher = types.SimpleNamespace(
    x0=lambda p, x, t, cond=None, w=None: posterior(1.0, x, t)
  )
  fake = types.SimpleNamespace(
    x0=lambda theta, x, t, cond=None, w=None: posterior(theta**2, x, t)
  )
  cfg = dict(refine.DEFAULTS)
  return (student, fake, teacher, cfg, None, refine.time_table(schedule))


def test_generator_gradient_points_to_the_data_scale():
  """With the exact fake score, SiD's generator gradient is zero at the
  data's scale and pushes theta towards it from both sides."""
  parts = _gaussian_parts(schedules.DiscreteSchedule.named("linear"))

  def grad(theta, i):
    eps = jax.random.normal(jax.random.key(i), (4096, 1))
    fn = lambda th: refine.generator_loss(  # noqa: E731
      th, jnp.float32(theta), None, {"eps": eps}, jax.random.key(100 + i),
      parts,
    )[0]  # fmt: skip
    return float(jax.grad(fn)(jnp.float32(theta)))

  assert grad(1.0, 0) == 0.0  # f_psi = f_phi exactly at theta = 1
  for theta, sign in ((0.7, -1), (0.97, -1), (1.03, 1), (1.4, 1)):
    # Eight independent batches, each with the right sign (a gradient of
    # random sign would pass with probability 1/256; the per-batch values
    # are heavy-tailed through the 1/sg(|x_g - f_phi|) normalisation, so
    # the sign of each, not a mean, is the check).
    g = np.array([grad(theta, i) for i in range(8)])
    assert np.all(sign * g > 0), (theta, g)


def _circle_cond():
  config = recipes.gmm_config("circle_cond")
  teacher = gmm.build(config.teacher)
  return config, teacher


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_fake_starts_as_the_guided_teacher():
  """The mixture's fake network starts at the teacher, guided or not (up
  to its copies' jitter), so the first generator gradient (before the
  fake network's first update) is all but zero: with the fake unguided
  against a guided teacher (`refine.guide_fake=false`) it is not."""
  config, teacher = _circle_cond()
  fake, params_fn = refine.build_fake(
    teacher, config.student, jax.random.key(0)
  )
  fake_params = params_fn(teacher.params)
  n = 64
  x = jax.random.normal(jax.random.key(1), (n, 2)) * 2.0
  t = jnp.linspace(1.0, 999.0, n).round()
  c = jnp.arange(n) % 8
  # The copies' means sit within a few x MIXTURE_JITTER x std (0.0015
  # here) of their component's, centred, so the prediction moves by at
  # most that much (near the boundaries between components, where the
  # responsibilities switch) and by second order elsewhere (measured: max
  # 2.3e-4 / 4.1e-4 unguided / w = 2, mean 5e-6 / 1e-5).
  bound = 3 * refine.MIXTURE_JITTER * float(jnp.max(teacher.params["stds"]))
  for w in (None, 2.0):
    # Compiled whole (op by op, each small op dispatches on its own).
    gap = jax.jit(
      lambda fp, tp, w=w: fake.x0(fp, x, t, c, w) - teacher.x0(tp, x, t, c, w)
    )
    diff = jnp.abs(gap(fake_params, teacher.params))
    assert float(jnp.max(diff)) <= bound, (w, float(jnp.max(diff)))
    assert float(jnp.mean(diff)) <= 1e-2 * bound, (w, float(jnp.mean(diff)))
  # A student from the BOOT config, and SiD's generator loss at w = 2.
  student, init_fn = student_lib.build_student(
    teacher, config.student, jax.random.key(2)
  )
  params = init_fn(teacher.params)
  batch = {"eps": jax.random.normal(jax.random.key(3), (n, 2)), "cond": c}
  norms = {}
  for guide_fake in (False, True):
    cfg = {**refine.DEFAULTS, "guide_fake": guide_fake}
    parts = (student, fake, teacher, cfg, 2.0, refine.time_table(
      teacher.schedule))  # fmt: skip
    grad_fn = jax.jit(
      lambda *args, parts=parts: jax.value_and_grad(
        refine.generator_loss, has_aux=True
      )(*args, parts)
    )
    (loss, _), grads = grad_fn(
      params, fake_params, teacher.params, batch, jax.random.key(4)
    )
    norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
    norms[guide_fake] = (float(loss), norm)
  # Guided alike, the loss and its gradient are what the copies' jitter
  # leaves (measured 2.5e-5 and 5.1e-4; bounded at 1e-3 and 1e-2, below
  # one percent of the next case); the unguided fake network against the
  # guided teacher gives a real gradient (measured 0.86 and 3.8).
  assert abs(norms[True][0]) <= 1e-3 and norms[True][1] <= 1e-2, norms
  assert norms[False][0] != 0.0 and norms[False][1] > 0.1, norms


def test_refine_guidance_setting():
  config = defaults.base_config()
  config.boot.guidance = 2.0
  assert refine.guidance(config) == 2.0  # BOOT's w by default
  config.refine.guidance = 1.5
  assert refine.guidance(config) == 1.5
  config.refine.guidance = 1.0  # the conditional output: no null branch
  assert refine.guidance(config) is None
  for bad in (-1.0, float("nan"), float("inf")):
    config.refine.guidance = bad
    with pytest.raises(ValueError, match="must be finite and >= 0"):
      refine.guidance(config)


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_boot_weight_adds_boots_loss():
  """refine.boot_weight: the student's loss in the phase is SiD's plus the
  weight times BOOT's own loss on the same batch (the one BOOT's step
  computes there, to float32 rounding of two compilations); negative,
  NaN and infinite weights are refused in one line."""
  config = recipes.gmm_config("circle")
  config.boot.refine = True
  config.train.steps = 0
  config.train.batch_size = 32
  config.refine.boot_weight = 2.5
  s = trainer.setup(config)
  state = s.init_state()
  batch = s.draw(0, s.stage(0))
  direct, _ = step_lib.make_loss_fn(s.student, s.teacher, config.boot)(
    state.params, s.teacher.params, batch
  )
  _, m = s.step_fn(state, 0)
  assert float(m["loss_boot"]) > 0
  np.testing.assert_allclose(m["loss_boot"], direct, rtol=1e-5)
  np.testing.assert_allclose(
    m["loss"], m["loss_sid"] + 2.5 * m["loss_boot"], rtol=1e-6
  )
  for bad in (-1.0, float("nan"), float("inf")):
    config.refine.boot_weight = bad
    with pytest.raises(ValueError, match="boot_weight must be finite"):
      refine.settings(config)
  config.refine.boot_weight = 2.5
  for key in ("lr", "fake_lr"):
    for bad in (0.0, -1.0, float("nan"), float("inf")):
      config.refine[key] = bad
      with pytest.raises(ValueError, match="fake_lr must be finite and > 0"):
        refine.settings(config)
    config.refine[key] = 1e-5
