"""Diffusion math against diffusers' PyTorch DDIMScheduler and identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boot_jax.diffusion import predictions, schedules

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

_TABLES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# Stable Diffusion's betas for scaled_linear; DDPM's for the others.
_BETAS = {
  "linear": dict(beta_start=0.0001, beta_end=0.02),
  "scaled_linear": dict(beta_start=0.00085, beta_end=0.012),
  "squaredcos_cap_v2": dict(beta_start=0.0001, beta_end=0.02),
}


def _model_x0(x, lib):
  """A smooth stand-in denoiser, written once per framework."""
  return 0.9 * lib.tanh(x)


def _native_output(x0, x, alpha, sigma, prediction, lib):
  eps = (x - alpha * x0) / sigma
  return eps if prediction == "eps" else alpha * eps - sigma * x0


@pytest.mark.parametrize("table", _TABLES)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_matches_diffusers(table, prediction, set_alpha_to_one, spacing):
  """Our DDIM step and sampler against diffusers' DDIMScheduler (eta 0).

  Two comparisons, both over all 50 steps:

  * Step by step on identical model outputs: at every step both get the
    same sample and the same output array, and produce the next sample.
  * The whole sampler driven by the same denoiser function in each
    framework (x0 = 0.9 tanh(x)), each on its own trajectory.

  Tolerance 1e-5 absolute in float32: samples are O(1) and XLA rewrites a
  division by a broadcast scalar as a multiplication by its reciprocal,
  a difference of about one ulp per operation. (Feeding the *same* output
  arrays to a whole 50-step run instead would multiply such ulps by the
  map's Jacobian, 1 / alpha_T = 156 for the linear table, measuring the
  test's conditioning rather than the step.)
  """
  offset = 1 if spacing == "leading" else 0
  ref = diffusers.DDIMScheduler(
    beta_schedule=table,
    prediction_type=prediction,
    set_alpha_to_one=set_alpha_to_one,
    clip_sample=False,
    timestep_spacing=spacing,
    steps_offset=offset,
    **_BETAS[table],
  )
  ref.set_timesteps(50)
  ours = predictions.DiscreteSchedule.named(
    table, set_alpha_to_one=set_alpha_to_one, **_BETAS[table]
  )
  # numpy's and torch's float32 linspace differ by one ulp in a few betas,
  # which moves alphas_cumprod by at most ~1e-7.
  np.testing.assert_allclose(
    ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=2e-7
  )
  ts = ours.timesteps(50, spacing, offset)
  np.testing.assert_array_equal(ts, ref.timesteps.numpy())
  pred = predictions.canonical_prediction(prediction)
  abar = ref.alphas_cumprod

  x_T = np.random.default_rng(0).standard_normal((4, 8, 8, 3))
  x_T = x_T.astype(np.float32)

  # Reference trajectory, recording every step's input and model output.
  x = torch.from_numpy(x_T)
  inputs, outputs, expected = [], [], []
  for t in ref.timesteps:
    a, sg = abar[t] ** 0.5, (1 - abar[t]) ** 0.5
    out = _native_output(_model_x0(x, torch), x, a, sg, pred, torch)
    inputs.append(x.numpy())
    outputs.append(out.numpy())
    x = ref.step(out, t, x, eta=0.0).prev_sample
    expected.append(x.numpy())
  inputs, outputs, expected = map(np.stack, (inputs, outputs, expected))

  # 1. Step by step: per-example timesteps, all 50 steps in one batch.
  k = np.arange(50)
  t_k = np.repeat(ts, 4)
  s_k = np.repeat(np.where(k + 1 < 50, ts[np.minimum(k + 1, 49)], -1), 4)
  step = jax.jit(
    lambda x, o, t, s: predictions.ddim_step(ours, x, o, t, s, pred)[0]
  )
  got = step(
    inputs.reshape(200, 8, 8, 3), outputs.reshape(200, 8, 8, 3), t_k, s_k
  )
  np.testing.assert_allclose(
    np.asarray(got).reshape(expected.shape), expected, rtol=0, atol=1e-5
  )

  # 2. The whole sampler, driven by the same denoiser.
  def model_fn(x, t):
    a, sg = ours.alpha_sigma(t)
    a, sg = a[:, None, None, None], sg[:, None, None, None]
    return _native_output(_model_x0(x, jnp), x, a, sg, pred, jnp)

  sample = jax.jit(
    lambda x: predictions.ddim_sample(
      model_fn, x, ours, ts, pred, return_trajectory=True
    )
  )
  final, xs = sample(jnp.asarray(x_T))
  np.testing.assert_allclose(np.asarray(xs), expected, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(final), np.asarray(xs[-1]))


@pytest.mark.parametrize(
  "options",
  [
    dict(clip_sample=True, clip_sample_range=0.5),
    dict(thresholding=True, sample_max_value=1.5),
    dict(clip_sample=False),
    {},  # silent: DDIMScheduler's own default, clip_sample at 1
  ],
  ids=["clip", "threshold", "neither", "silent"],
)
def test_ddim_options_of_a_scheduler_config_match_diffusers(options):
  """A scheduler config's clipping or thresholding, read by
  `folders.ddim_options` and applied by `x0_processing`, against
  `DDIMScheduler.from_config` of the same config on one step from the same
  sample and output (1e-5: float32, O(1) samples, as above)."""
  from boot_jax.teachers import folders

  cfg = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    set_alpha_to_one=False, steps_offset=1, **options,
  )  # fmt: skip
  ref = diffusers.DDIMScheduler.from_config(cfg)
  ref.set_timesteps(10)
  ours = predictions.DiscreteSchedule.named(
    "scaled_linear", set_alpha_to_one=False, beta_start=0.00085,
    beta_end=0.012,
  )  # fmt: skip
  x0_fn = predictions.x0_processing(folders.ddim_options(cfg))
  assert (x0_fn is None) == (options == dict(clip_sample=False))
  rng = np.random.default_rng(3)
  x = rng.standard_normal((3, 8, 8, 4)).astype(np.float32) * 2.0
  out = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
  t, s = int(ref.timesteps[2]), int(ref.timesteps[3])
  want = ref.step(torch.from_numpy(out), t, torch.from_numpy(x)).prev_sample
  got, _ = predictions.ddim_step(
    ours, jnp.asarray(x), jnp.asarray(out), jnp.full((3,), t),
    jnp.full((3,), s), "eps", x0_fn,
  )  # fmt: skip
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-5)


def _all_schedules():
  for table in _TABLES:
    for one in (True, False):
      yield (
        f"{table}-{one}",
        predictions.DiscreteSchedule.named(
          table, set_alpha_to_one=one, **_BETAS[table]
        ),
      )
  for name in ("cosine", "linear", "rectified_flow"):
    yield name, predictions.ContinuousSchedule(name)


@pytest.mark.parametrize(
  "name,schedule", list(_all_schedules()), ids=lambda v: str(v)[:24]
)
def test_signal_step_equals_x_space_step(name, schedule):
  """y-space DDIM step, mapped back to x, equals the x-space DDIM step."""
  del name
  rng = np.random.default_rng(1)
  n = 512
  if schedule.kind == "discrete":
    t = rng.integers(1, schedule.num_train_steps, n)
    # s anywhere below t, the clean end (-1) included.
    s = np.floor(rng.uniform(-1, t)).astype(np.int64)
  else:
    t = rng.uniform(0.01, 1.0, n)
    s = rng.uniform(0.0, t)
    s[:8] = 0.0  # the clean end
    t[8:16] = 1.0  # the noise end (alpha = 0 for cosine)
  shape = (n, 6)
  y_t = rng.standard_normal(shape).astype(np.float32)
  eps = rng.standard_normal(shape).astype(np.float32)
  f = rng.standard_normal(shape).astype(np.float32)

  @jax.jit
  def both(y_t, eps, f, t, s):
    a_t, s_t = schedule.alpha_sigma(t)
    a_s, s_s = schedule.alpha_sigma(s)
    x_t = predictions.x_from_signal(y_t, eps, a_t, s_t)
    delta = predictions.ddim_delta(a_t, s_t, a_s, s_s)
    y_s = predictions.signal_step(y_t, f, delta)
    via_signal = predictions.x_from_signal(y_s, eps, a_s, s_s)
    # x-space: x_s = alpha_s f + sigma_s (x_t - alpha_t f) / sigma_t.
    via_x, _ = predictions.ddim_step(schedule, x_t, f, t, s, "x0")
    return via_signal, via_x, delta, (a_t, s_t, a_s, s_s)

  via_signal, via_x, delta, coefs = both(y_t, eps, f, t, s)
  assert np.all(np.isfinite(via_signal))
  # Values are O(1); float32 rounding of the two routes differs by a few
  # ulps (up to 1/alpha_t times larger where alpha_t is small, but those
  # terms are multiplied by alpha_s <= alpha_t again).
  np.testing.assert_allclose(via_signal, via_x, rtol=0, atol=1e-6)
  # delta = 1 - exp(lambda_s - lambda_t), in float64 from the same alphas.
  a_t, s_t, a_s, s_s = (np.asarray(v, np.float64) for v in coefs)
  with np.errstate(divide="ignore"):
    lam_t = np.log(s_t) - np.log(a_t)
    lam_s = np.log(s_s) - np.log(a_s)
  expected = 1.0 - np.exp(lam_s - lam_t)
  # One float32 rounding of a ratio in [0, 1].
  np.testing.assert_allclose(delta, expected, rtol=0, atol=2e-7)


def test_conversions_round_trip():
  rng = np.random.default_rng(2)
  x0 = rng.standard_normal((16, 3)).astype(np.float32)
  eps = rng.standard_normal((16, 3)).astype(np.float32)
  alpha = rng.uniform(0.05, 1.0, 16).astype(np.float32)
  sigma = np.sqrt(1 - alpha**2).astype(np.float32)
  x_t = alpha[:, None] * x0 + sigma[:, None] * eps

  @jax.jit
  def round_trip(x0, eps, x_t, alpha, sigma):
    res = {}
    for p in predictions.PREDICTIONS:
      out = predictions.output_from_x0_eps(x0, eps, alpha, sigma, p)
      res[p] = predictions.x0_eps_from_output(out, x_t, alpha, sigma, p)
    return res

  for p, (x0_hat, eps_hat) in round_trip(x0, eps, x_t, alpha, sigma).items():
    # Division by alpha >= 0.05 amplifies float32 rounding by up to 20x.
    np.testing.assert_allclose(x0_hat, x0, atol=2e-5, err_msg=p)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-5, err_msg=p)


def test_continuous_schedules_closed_form():
  t = np.linspace(0, 1, 101)
  cos = predictions.ContinuousSchedule("cosine")
  a, s = jax.jit(cos.alpha_sigma)(t)
  s0 = 0.008
  ref = np.cos(np.pi / 2 * (t + s0) / (1 + s0)) / np.cos(np.pi / 2 * s0 / 1.008)
  np.testing.assert_allclose(a, np.clip(ref, 0, 1), atol=1e-6)
  np.testing.assert_allclose(np.square(a) + np.square(s), 1.0, atol=1e-6)
  lin = predictions.ContinuousSchedule("linear")
  a, s = jax.jit(lin.alpha_sigma)(t)
  ref = np.exp(-0.25 * t**2 * 19.9 - 0.05 * t)
  np.testing.assert_allclose(a, ref, rtol=1e-6)
  lam = jax.jit(lambda t: predictions.lambda_(lin, t))(t[1:])
  assert np.all(np.diff(lam) > 0)


def test_flow_ddim_step_is_the_euler_step():
  """On the rectified flow a DDIM step of a velocity output `u` from t to
  s is the Euler step `x_t + (s - t) u` (docs/method.md), for any t > s,
  the clean end and the noise end (alpha = 0) included; float32, values
  O(1): a few ulps."""
  rng = np.random.default_rng(4)
  n = 256
  schedule = predictions.ContinuousSchedule("rectified_flow")
  t = rng.uniform(0.01, 1.0, n)
  t[:8] = 1.0
  s = rng.uniform(0.0, t)
  s[8:16] = 0.0
  x_t = rng.standard_normal((n, 5)).astype(np.float32)
  u = rng.standard_normal((n, 5)).astype(np.float32)
  x_s, _ = jax.jit(
    lambda x, u, t, s: predictions.ddim_step(schedule, x, u, t, s, "flow")
  )(x_t, u, t, s)
  euler = x_t + (s - t).astype(np.float32)[:, None] * u
  np.testing.assert_allclose(x_s, euler, rtol=0, atol=2e-6)


# FLUX's mu at 1024 px (4096 latent tokens) and at 512 px (1024 tokens).
FLUX_MU_1024 = schedules.resolution_mu(4096)
FLUX_MU_512 = schedules.resolution_mu(1024)


@pytest.mark.parametrize(
  "shift,mu",
  [(1.0, None), (3.0, None), (1.0, FLUX_MU_1024), (1.0, FLUX_MU_512)],
)
def test_rectified_flow_sampler_matches_diffusers(shift, mu):
  """The rectified flow's times and its DDIM sampler on a velocity network
  equal diffusers' `FlowMatchEulerDiscreteScheduler` step by step, with
  SD3's constant time shift and with FLUX's resolution-dependent one
  (`use_dynamic_shifting`, `mu` from `resolution_mu`): times to 1e-6
  (float32 rounding of the shift), samples to 1e-5 after 28 steps of a
  smooth velocity field."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  schedule = predictions.make_schedule(
    dict_config(type="continuous", name="rectified_flow", shift=shift, mu=mu)
  )
  rng = np.random.default_rng(5)
  x_T = rng.standard_normal((3, 4)).astype(np.float32)

  def velocity(x, t):  # a smooth field; t is diffusers' sigma
    return 0.5 * x * t - 0.3 * x + t

  for steps in (1, 4, 28):
    ref = diffusers.FlowMatchEulerDiscreteScheduler(
      shift=shift, use_dynamic_shifting=mu is not None
    )
    ref.set_timesteps(steps, mu=mu)
    ts = schedule.timesteps(steps)
    np.testing.assert_allclose(ts, ref.sigmas.numpy()[:-1], rtol=0, atol=1e-6)
    x = torch.from_numpy(x_T)
    for k, timestep in enumerate(ref.timesteps):
      sigma = float(ref.sigmas[k])
      x = ref.step(velocity(x, sigma), timestep, x).prev_sample
    ours = predictions.ddim_sample(
      lambda x, t: velocity(x, t[:, None]), x_T, schedule, ts, "flow"
    )
    np.testing.assert_allclose(ours, x.numpy(), rtol=0, atol=1e-5)


def dict_config(**fields):
  import ml_collections

  return ml_collections.ConfigDict(fields)


def test_bad_schedule_names_raise():
  with pytest.raises(ValueError, match="unknown beta schedule"):
    predictions.make_betas("quadratic")
  with pytest.raises(ValueError, match="unknown continuous schedule"):
    predictions.ContinuousSchedule("sigmoid")
  with pytest.raises(ValueError, match="spacing"):
    predictions.DiscreteSchedule.named("linear").timesteps(10, "random")
  with pytest.raises(ValueError, match="unknown prediction"):
    predictions.canonical_prediction("score")
