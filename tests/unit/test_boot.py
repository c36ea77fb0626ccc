"""The BOOT objective: exactness on the analytic teacher, gradient flow."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from boot_jax import teachers
from boot_jax.config import defaults, recipes
from boot_jax.diffusion import predictions
from boot_jax.distill import boot, conditions
from boot_jax.distill import student as student_lib

try:
  import diffusers
except ImportError:  # pragma: no cover
  diffusers = None


def _gmm_teacher(schedule_cfg, conditional=False):
  section = recipes.gmm_teacher(
    dim=3,
    num_components=5,
    std=0.3,
    seed=4,
    layout="random",
    conditional=conditional,
    schedule=schedule_cfg,
  )
  return teachers.build_teacher(section)


_SCHEDULES = {
  "linear": defaults.discrete_schedule("linear"),
  "scaled_linear": defaults.discrete_schedule(
    "scaled_linear", 1000, 0.00085, 0.012
  ),
  "cosine": ml_collections.ConfigDict(dict(type="continuous", name="cosine")),
  "rectified_flow": ml_collections.ConfigDict(
    dict(type="continuous", name="rectified_flow")
  ),
}


def _exact_student(teacher, grid, guidance):
  """A 'student' that is the teacher's exact DDIM trajectory on the grid.

  It runs the x-space DDIM sampler (checked against diffusers) from
  `x_T = eps` and returns the signal `y = (x - sigma eps) / alpha` at the
  grid point of each example's time. At the noise end, where `alpha_T = 0`
  leaves y undefined, it returns `f(eps, T)`, its limit from below.
  """
  ts = grid.ddim_timesteps()
  times = jnp.asarray(grid.times)

  def student_fn(params, eps, t, cond):
    del params
    _, xs = teacher.ddim(
      teacher.params, eps, ts, cond, guidance, return_trajectory=True
    )
    # xs[k] is the sample at ts[k + 1] (the clean end last), so grid index
    # i < N holds xs[N - 1 - i]; index N is eps itself.
    n = grid.num_steps
    xs = jnp.concatenate([xs[::-1], eps[None]])  # [N + 1, B, D] by index
    idx = jnp.argmin(jnp.abs(times[None, :] - t[:, None]), axis=1)
    x = xs[idx, jnp.arange(eps.shape[0])]
    a, s = teacher.schedule.alpha_sigma(t)
    y = predictions.signal_from_x(x, eps, jnp.where(a > 0, a, 1.0), s)
    f_T = teacher.x0(
      teacher.params, eps, jnp.full_like(t, times[n]), cond, guidance
    )
    return jnp.where((a > 0)[:, None], y, f_T)

  return student_fn


@pytest.mark.parametrize(
  "schedule,boundary_target,conditional",
  [
    ("cosine", "teacher", False),
    ("cosine", "teacher", True),
    ("linear", "ddim", False),
    ("scaled_linear", "ddim", True),
    # The flow x_t = (1 - t) x0 + t eps: its DDIM step is the Euler step.
    ("rectified_flow", "teacher", False),
    ("rectified_flow", "teacher", True),
  ],
)
@pytest.mark.parametrize("spacing", ["uniform", "lambda"])
def test_loss_is_zero_on_exact_trajectory(
  schedule, boundary_target, conditional, spacing
):
  teacher = _gmm_teacher(_SCHEDULES[schedule], conditional)
  grid = boot.make_grid(teacher.schedule, 16, spacing)
  guidance = 3.0 if conditional else None
  student_fn = _exact_student(teacher, grid, guidance)
  batch = conditions.draw_batch(
    jax.random.key(0), 0, jnp.arange(256), (3,), teacher.condition, grid
  )

  @jax.jit
  def losses(batch, shift):
    def fn(p, e, t, c):
      return student_fn(p, e, t, c) + shift

    def teacher_fn(x, t, c):
      return teacher.x0(teacher.params, x, t, c, guidance)

    return boot.boot_loss(
      None, batch, fn, teacher_fn, boundary_target=boundary_target
    )[1]

  exact = losses(batch, 0.0)
  # Every grid index is drawn, so every step of the trajectory is checked.
  assert set(np.asarray(batch["t"]).tolist()) == set(grid.times[1:].tolist())
  # float32: the signal is read back from x with a division by alpha (down
  # to 0.0064 near T), so its rounding is ~1e-5; squared and weighted by
  # 1/delta^2 this stays below 1e-6.
  assert float(exact["loss_bs"]) < 1e-6, exact
  assert float(exact["loss_bc"]) < 1e-8, exact
  # The same check detects a trajectory that is off by 0.01.
  perturbed = losses(batch, 0.01)
  assert float(perturbed["loss"]) > 1e-4


def test_clean_time_sampling_draws_step_i_in_proportion_to_one_over_i():
  """'clean' draws grid step i (1 = onto the clean end) with probability
  (1 / i) / H_N; on 65,536 draws each frequency is within 5 standard
  errors of it (binomial; a flat draw would miss step 1 by ~80 of them).
  The default, 'uniform', draws what it drew before the option existed."""
  teacher = _gmm_teacher(_SCHEDULES["linear"])
  grid = boot.make_grid(teacher.schedule, 8)
  n = 65536

  def draw(**kw):
    return conditions.draw_batch(
      jax.random.key(3), 0, jnp.arange(n), (2,), teacher.condition, grid, **kw
    )

  t = np.asarray(draw(time_sampling="clean")["t"])
  idx = np.searchsorted(grid.times, t)
  p = (1.0 / np.arange(1, 9)) / np.sum(1.0 / np.arange(1, 9))
  freq = np.bincount(idx, minlength=9)[1:] / n
  se = np.sqrt(p * (1 - p) / n)
  np.testing.assert_array_less(np.abs(freq - p), 5 * se)
  # The default stream: the uniform integer draw on the same keys.
  keys = conditions._example_keys(jax.random.key(3), 0, jnp.arange(n))
  k_time = jax.vmap(lambda k: jax.random.split(k, 3))(keys)[:, 1]
  old = jax.vmap(lambda k: jax.random.randint(k, (), 1, 9))(k_time)
  np.testing.assert_array_equal(
    np.asarray(draw()["t"]), np.asarray(grid.times)[np.asarray(old)]
  )


def test_parameter_used_only_at_t_gets_zero_gradient():
  teacher = _gmm_teacher(_SCHEDULES["linear"])
  grid = boot.make_grid(teacher.schedule, 8)
  i = 5  # t = times[5], s = times[4]; neither is T = times[8]
  t_only = float(grid.times[i])
  batch = conditions.draw_batch(
    jax.random.key(1), 0, jnp.arange(32), (3,), teacher.condition, grid
  )
  batch.update(
    boot.time_inputs(grid, jnp.full((32,), i, jnp.int32)),
  )

  def student_fn(params, eps, t, cond):
    del cond
    at_t = (t == t_only).astype(eps.dtype)[:, None]
    return (
      eps @ params["w"]
      + params["b"] * t[:, None] / 1000.0
      + at_t * params["only_at_t"]
    )

  params = dict(
    w=jnp.eye(3) * 0.5,
    b=jnp.ones((3,)),
    only_at_t=jnp.array([0.3, -0.2, 0.1]),
  )

  def teacher_fn(x, t, c):
    return teacher.x0(teacher.params, x, t, c)

  def loss(params):
    return boot.boot_loss(params, batch, student_fn, teacher_fn)[0]

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_array_equal(grads["only_at_t"], 0.0)
  assert float(jnp.abs(grads["w"]).max()) > 0
  assert float(jnp.abs(grads["b"]).max()) > 0
  # The parameter does enter the loss (through the stopped target).
  moved = dict(params, only_at_t=params["only_at_t"] + 0.5)
  assert abs(float(jax.jit(loss)(moved)) - float(value)) > 1e-4


@pytest.mark.skipif(diffusers is None, reason="needs diffusers")
def test_uniform_grid_is_diffusers_trailing():
  schedule = predictions.DiscreteSchedule.named("linear")
  for n in (8, 16, 32, 64):
    grid = boot.make_grid(schedule, n)
    ref = diffusers.DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(n)
    np.testing.assert_array_equal(grid.ddim_timesteps(), ref.timesteps.numpy())
    assert grid.times[0] == -1 and grid.times[-1] == 999
    assert grid.alphas[0] == 1.0 and grid.sigmas[0] == 0.0


def test_lambda_grid_is_uniform_in_lambda():
  cos = predictions.ContinuousSchedule("cosine")
  grid = boot.make_grid(cos, 16, "lambda")
  assert grid.num_steps == 16 and grid.times[-1] == 1.0
  assert grid.times[0] == 0.0
  # Below the top (alpha = 0 at t = 1), lambda steps are equal; times are
  # interpolated from a 5e-6 table and alphas rounded to float32.
  lam = np.log(grid.sigmas[1:-1]) - np.log(grid.alphas[1:-1])
  steps = np.diff(lam)
  np.testing.assert_allclose(steps, steps.mean(), rtol=1e-3)
  # The uniform range ends at the uniform grid's second-highest point.
  np.testing.assert_allclose(grid.times[-2], 15 / 16, atol=5e-6)

  lin = predictions.DiscreteSchedule.named("linear")
  grid = boot.make_grid(lin, 32, "lambda")
  assert np.all(np.diff(grid.times) > 0)
  assert grid.times[-1] == 999 and grid.times[0] == -1
  lam = np.log(grid.sigmas[1:]) - np.log(grid.alphas[1:])
  # Integer timesteps: each lambda is within half a timestep's lambda
  # increment of its uniform target (~0.04 where lambda rises fastest
  # among the chosen points), and small timesteps merge.
  target = np.linspace(lam[0], lam[-1], 32)
  assert grid.num_steps <= 32
  err = np.min(np.abs(lam[:, None] - target[None, :]), axis=0)
  assert np.max(err[err < 0.3]) < 0.05
  assert np.mean(err < 0.05) > 0.8


def test_student_generate_and_trajectory():
  teacher = _gmm_teacher(_SCHEDULES["linear"])
  config = defaults.base_config().student
  config.init = "fresh"
  config.model = ml_collections.ConfigDict(dict(name="mlp", width=16, depth=1))
  student, params = student_lib.make_student(teacher, config, jax.random.key(0))
  eps = jax.random.normal(jax.random.key(1), (4, 3))
  ts = jnp.array([999.0, 500.0, -1.0])
  traj = jax.jit(student.trajectory)(params, eps, ts)
  one = jax.jit(student.generate)(params, eps)
  assert traj.shape == (3, 4, 3)
  np.testing.assert_allclose(traj[-1], one, atol=1e-6)
  y = jax.jit(student.apply)(params, eps, jnp.full((4,), 500.0))
  a, s = teacher.schedule.alpha_sigma(500)
  np.testing.assert_allclose(traj[1], a * y + s * eps, atol=1e-6)


class _ExactGuidedStudent:
  """Stands in for a guidance-conditioned student: the exact trajectory of
  the teacher guided with each example's own w (or a fixed `w` if given)."""

  guided = True
  space = "signal"

  def __init__(self, teacher, grid, fixed_w=None):
    self.teacher, self.grid, self.fixed_w = teacher, grid, fixed_w

  def apply(self, params, eps, t, cond, guidance):
    w = guidance if self.fixed_w is None else jnp.full_like(t, self.fixed_w)
    return _exact_student(self.teacher, self.grid, w)(params, eps, t, cond)


def test_guided_loss_reads_each_examples_w():
  """With w drawn per example, the loss is zero only for a student that
  follows the trajectory guided with that example's w."""
  from boot_jax.distill import step as step_lib

  teacher = _gmm_teacher(_SCHEDULES["cosine"], conditional=True)
  grid = boot.make_grid(teacher.schedule, 16)
  boot_config = defaults.base_config().boot
  batch = conditions.draw_batch(
    jax.random.key(0),
    0,
    jnp.arange(128),
    (3,),
    teacher.condition,
    grid,
    guidance_range=(0.0, 5.0),
  )
  w = np.asarray(batch["w"])
  assert w.min() >= 0.0 and w.max() <= 5.0 and w.std() > 1.0

  def loss(student):
    fn = step_lib.make_loss_fn(student, teacher, boot_config)
    return jax.jit(fn)(None, teacher.params, batch)[1]

  exact = loss(_ExactGuidedStudent(teacher, grid))
  assert float(exact["loss_bs"]) < 1e-6 and float(exact["loss_bc"]) < 1e-8
  # A student blind to w (the trajectory of one fixed w) is far off.
  blind = loss(_ExactGuidedStudent(teacher, grid, fixed_w=2.5))
  assert float(blind["loss"]) > 1e-3


def _unet_teacher(num_classes=3):
  model = dict(name="unet", channels=8, channel_mult=(1,), num_res_blocks=1)
  return teachers.build_teacher(
    recipes.random_unet_teacher(model, (8, 8, 1), num_classes=num_classes)
  )


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_guided_student_starts_as_the_teacher():
  teacher = _unet_teacher()
  # Random init zeroes every output layer; perturb so outputs depend on
  # the inputs (and gradients reach the new embedding).
  leaves, treedef = jax.tree.flatten(teacher.params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  noisy = [
    x + 0.1 * jax.random.normal(k, x.shape)
    for x, k in zip(leaves, keys, strict=True)
  ]
  teacher = dataclasses.replace(
    teacher, params=jax.tree.unflatten(treedef, noisy)
  )
  config = defaults.base_config().student
  key = jax.random.key(0)
  plain, plain_fn = student_lib.build_student(teacher, config, key)
  guided, guided_fn = student_lib.build_student(
    teacher, config, key, guided=True
  )
  p0 = jax.jit(plain_fn)(teacher.params)
  p1 = jax.jit(guided_fn)(teacher.params)
  assert "GuidanceEmbedding_0" in p1 and "GuidanceEmbedding_0" not in p0
  eps = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  labels = jnp.array([0, 1, 2, 3])
  t = jnp.full((4,), 700.0)
  ref = jax.jit(plain.apply)(p0, eps, t, labels)
  for w in (0.0, 1.0, 7.5):
    out = jax.jit(guided.apply)(p1, eps, t, labels, jnp.full((4,), w))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))

  # The new embedding learns: its zero output layer gets a gradient.
  def objective(p):
    return jnp.sum(guided.apply(p, eps, t, labels, jnp.full((4,), 2.0)))

  grads = jax.jit(jax.grad(objective))(p1)
  last = grads["GuidanceEmbedding_0"]["Dense_1"]["kernel"]
  assert float(jnp.max(jnp.abs(last))) > 0
  with pytest.raises(ValueError, match="guidance-conditioned"):
    guided.apply(p1, eps, t, labels)


def test_guidance_range_errors():
  config = defaults.base_config()
  config.boot.guidance = 2.0
  config.boot.guidance_range = (1.0, 3.0)
  with pytest.raises(ValueError, match="not both"):
    defaults.validate(config)
  config.boot.guidance = None
  config.boot.guidance_range = (3.0, 1.0)
  with pytest.raises(ValueError, match="w_min <= w_max"):
    defaults.validate(config)
  with pytest.raises(ValueError, match="needs a conditional teacher"):
    student_lib.build_student(
      _unet_teacher(num_classes=0),
      defaults.base_config().student,
      jax.random.key(0),
      guided=True,
    )
