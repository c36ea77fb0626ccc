"""Teachers: the analytic mixture against Monte Carlo, the interface, nets."""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from boot_jax import models, teachers
from boot_jax.config import defaults, recipes
from boot_jax.diffusion import predictions
from boot_jax.teachers import gmm

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config(name, arg=""):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _snis(samples, x_t, alpha, sigma):
  """Self-normalised importance estimate of E[x0 | x_t] and its std error.

  Proposal: exact mixture samples x0_i (the prior); weights are the
  likelihoods N(x_t; alpha x0_i, sigma^2 I). float64 numpy throughout.
  """
  logw = -0.5 * np.sum((x_t - alpha * samples) ** 2, -1) / sigma**2
  w = np.exp(logw - logw.max())
  w /= w.sum()
  est = w @ samples
  # Delta-method variance of a self-normalised estimator.
  se = np.sqrt(np.sum(w[:, None] ** 2 * (samples - est) ** 2, 0))
  ess = 1.0 / np.sum(w**2)
  return est, se, ess


@pytest.mark.parametrize("dim,layout", [(2, "circle"), (5, "random")])
def test_gmm_posterior_mean_matches_importance_sampling(dim, layout):
  means, stds, weights = gmm.mixture_arrays(dim, 6, 2.0, 0.4, 3, layout)
  weights = np.array([0.3, 0.1, 0.2, 0.15, 0.15, 0.1])
  params = gmm.make_params(means, stds, weights)
  schedule = predictions.DiscreteSchedule.named("linear")
  apply = jax.jit(gmm.make_apply(schedule, conditional=False))

  rng = np.random.default_rng(0)
  n = 400_000
  comp = rng.choice(6, size=n, p=weights)
  samples = means[comp] + stds[comp, None] * rng.standard_normal((n, dim))

  checked = 0
  for t in (200, 400, 600, 800, 999):
    a, s = (float(v) for v in schedule.alpha_sigma(t))
    for _ in range(3):
      # x_t from the forward process, so it lies where the posterior lives.
      x0 = samples[rng.integers(n)]
      x_t = a * x0 + s * rng.standard_normal(dim)
      est, se, ess = _snis(samples, x_t, a, s)
      if ess < 200:  # too few effective samples for a normal error model
        continue
      got = np.asarray(apply(params, x_t[None], jnp.full((1,), t)))[0]
      z = np.abs(got - est) / se
      assert np.all(z <= 4.0), (t, got, est, se)
      checked += 1
  assert checked >= 10


def test_gmm_conditional_and_guided_forms():
  means, stds, weights = gmm.mixture_arrays(2, 4, 2.0, 0.3, 0, "circle")
  config = recipes.gmm_teacher(num_components=4, std=0.3, conditional=True)
  teacher = teachers.build_teacher(config)
  assert config.means is None  # the given section is never changed
  np.testing.assert_allclose(teachers.resolved(config).means, means)
  assert teacher.condition.num_classes == 4
  rng = np.random.default_rng(1)
  b = 64
  x = jnp.asarray(rng.standard_normal((b, 2)) * 1.5, jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, b), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, b), jnp.int32)
  null = jnp.full((b,), 4, jnp.int32)
  w = 2.5

  @jax.jit
  def forms(x, t, labels):
    p = teacher.params
    f_c = teacher.x0(p, x, t, labels)
    f_null = teacher.x0(p, x, t, null)
    f_w = teacher.x0(p, x, t, labels, guidance=w)
    f_plain = teacher.x0(p, x, t, None)
    per_example = teacher.x0(p, x, t, labels, guidance=jnp.full((b,), w))
    return f_c, f_null, f_w, f_plain, per_example

  f_c, f_null, f_w, f_plain, per_example = forms(x, t, labels)
  np.testing.assert_allclose(f_w, f_null + w * (f_c - f_null), atol=1e-5)
  np.testing.assert_allclose(per_example, f_w, atol=1e-6)
  # The null label is the whole mixture.
  uncond = gmm.make_apply(teacher.schedule, conditional=False)
  np.testing.assert_allclose(
    f_null, jax.jit(uncond)(teacher.params, x, t), atol=1e-6
  )
  np.testing.assert_allclose(f_plain, f_null, atol=1e-6)
  # A label gives that Gaussian's exact posterior mean.
  a, s = (np.asarray(v, np.float64) for v in teacher.schedule.alpha_sigma(t))
  mu = means[np.asarray(labels)]
  var = a**2 * 0.3**2 + s**2
  expected = mu + (a * 0.3**2 / var)[:, None] * (
    np.asarray(x) - a[:, None] * mu
  )
  np.testing.assert_allclose(f_c, expected, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_gmm_rectified_flow_sampler_converges_to_the_mixture(shift):
  """The exact mixture teacher on the rectified flow `x_t = (1 - t) x0 +
  t eps` (its posterior mean holds for any Gaussian path): Euler steps of
  its exact velocity from N(0, I) converge to the mixture. 20,000 samples
  of 4 components (stds 0.1 to 0.25, weights 0.1 to 0.4). Bars: component
  weights within 0.015 (4 standard errors of the largest weight); means
  within 0.01 and stds within 5% after 400 steps (measured 0.003 and
  within 1.5%; sampling error about 0.002 and 2%), and the mean error
  falls from 100 to 400 steps (Euler's discretisation error)."""
  means = np.array([[2, 0], [0, 2], [-2, 0], [0, -2]], np.float32)
  stds = np.array([0.1, 0.2, 0.15, 0.25], np.float32)
  weights = np.array([0.1, 0.2, 0.3, 0.4])
  params = gmm.make_params(means, stds, weights)
  schedule = predictions.ContinuousSchedule("rectified_flow", shift=shift)
  apply = gmm.make_apply(schedule, False)

  def velocity(x, t):
    alpha, sigma = schedule.alpha_sigma(t)
    x0 = apply(params, x, t)
    eps = (x - alpha[:, None] * x0) / sigma[:, None]
    return predictions.output_from_x0_eps(x0, eps, alpha, sigma, "flow")

  noise = jax.random.normal(jax.random.key(0), (20000, 2))
  mean_errors = []
  for steps in (100, 400):
    ts = schedule.timesteps(steps)
    out = np.asarray(
      jax.jit(
        lambda x, ts=ts: predictions.ddim_sample(
          velocity, x, schedule, ts, "flow"
        )
      )(noise)
    )
    k = np.asarray(gmm.assign(params, out))
    frac = np.bincount(k, minlength=4) / len(k)
    mu = np.stack([out[k == i].mean(0) for i in range(4)])
    sd = np.array([out[k == i].std(0).mean() for i in range(4)])
    mean_errors.append(float(np.abs(mu - means).max()))
    assert np.abs(frac - weights).max() <= 0.015, (steps, frac)
  assert mean_errors[1] <= 0.01 and mean_errors[1] < mean_errors[0]
  np.testing.assert_allclose(sd / stds, 1.0, atol=0.05)


def test_gmm_config_records_the_mixture():
  config = load_config("gmm.py", "random16")
  section = teachers.resolved(config.teacher)
  teacher = teachers.build_teacher(section)
  means = np.asarray(section.means)
  assert means.shape == (8, 16)
  np.testing.assert_allclose(section.stds, [0.15] * 8)
  np.testing.assert_allclose(section.weights, [1 / 8] * 8)
  np.testing.assert_allclose(teacher.params["means"], means, rtol=1e-6)
  again, _, _ = gmm.mixture_arrays(16, 8, 2.0, 0.15, 0, "random")
  np.testing.assert_array_equal(means, again)
  with pytest.raises(ValueError, match="std must be positive"):
    gmm.mixture_arrays(2, 8, 2.0, 0.0, 0)


def test_gmm_sample_and_assign():
  means, stds, weights = gmm.mixture_arrays(2, 8, 2.0, 0.15, 0, "circle")
  params = gmm.make_params(means, stds, weights)
  x, labels = jax.jit(lambda k: gmm.sample(params, k, 20000))(jax.random.key(0))
  assigned = jax.jit(gmm.assign)(params, x)
  # Components are 1.53 apart with std 0.15: essentially no overlap.
  assert np.mean(np.asarray(assigned) == np.asarray(labels)) > 0.999
  freq = np.bincount(np.asarray(labels), minlength=8) / 20000
  # Binomial std of a frequency of 1/8 from 20000 draws is 0.0023.
  np.testing.assert_allclose(freq, 1 / 8, atol=0.01)


def _net_teacher_config(name, model, sample_shape, prediction, classes=0):
  return ml_collections.ConfigDict(
    dict(
      name=name,
      model=model,
      schedule=defaults.discrete_schedule(
        "scaled_linear", 1000, 0.00085, 0.012
      ),
      prediction=prediction,
      sample_shape=sample_shape,
      num_classes=classes,
      init="random",
      seed=0,
    )
  )


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_unet_teacher_interface(prediction):
  model = recipes.unet_model(num_res_blocks=1, groups=4)
  config = _net_teacher_config("unet", model, (8, 8, 1), prediction, 10)
  teacher = teachers.build_teacher(config)
  pred = predictions.canonical_prediction(prediction)
  assert teacher.prediction == pred
  assert teacher.condition.kind == "class"
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  t = jnp.array([10.0, 500.0, 999.0])
  labels = jnp.array([0, 3, 10])  # 10 is the null class

  @jax.jit
  def run(params, x, t, labels):
    out = teacher.output(params, x, t, labels)
    return out, teacher.x0(params, x, t, labels)

  # Random init zeroes the output convolutions; perturb every weight so
  # the outputs (and the conversion being checked) are not trivially zero.
  leaves, treedef = jax.tree.flatten(teacher.params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(
    treedef,
    [
      p + 0.05 * jax.random.normal(k, p.shape)
      for p, k in zip(leaves, keys, strict=True)
    ],
  )
  out, x0 = run(params, x, t, labels)
  assert float(jnp.std(out)) > 1e-3
  a, s = teacher.schedule.alpha_sigma(t)
  np.testing.assert_allclose(
    x0, predictions.to_x0(out, x, a, s, pred), atol=1e-5
  )
  # The class table has a row for the null label.
  table = teacher.params["Embed_0"]["embedding"]
  assert table.shape[0] == 11


def test_unet_attention_only_where_named():
  def count_attention(resolutions):
    model = recipes.unet_model(
      channels=8,
      channel_mult=(1, 2, 2),
      num_res_blocks=1,
      attention_resolutions=resolutions,
      num_heads=1,
      groups=4,
    )
    module = models.make_model(model, (16, 16, 3))
    variables = jax.eval_shape(
      module.init,
      jax.random.key(0),
      jnp.zeros((1, 16, 16, 3)),
      jnp.zeros((1,)),
    )
    names = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    blocks = {
      str(path[0].key)
      for path, _ in names
      if "SelfAttention" in str(path[0].key)
    }
    return len(blocks), variables

  # Levels 16, 8, 4: one block down, two up per level, plus the middle (4).
  assert count_attention(())[0] == 0
  assert count_attention((8,))[0] == 3
  n, variables = count_attention((4,))
  assert n == 4
  # Every parameter carries logical axis names, one per dimension.
  boxed = variables["params"]
  leaves = jax.tree.leaves(
    boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )
  assert leaves and all(isinstance(v, nn.Partitioned) for v in leaves)
  for v in leaves:
    assert len(v.names) == v.value.ndim


def test_mlp_parameters_are_named():
  module = models.make_model(
    ml_collections.ConfigDict(dict(name="mlp", width=32, depth=2)), (5,), 3
  )
  variables = jax.eval_shape(
    module.init,
    jax.random.key(0),
    jnp.zeros((1, 5)),
    jnp.zeros((1,)),
    jnp.zeros((1,), jnp.int32),
  )
  leaves = jax.tree.leaves(
    variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )
  assert leaves and all(isinstance(v, nn.Partitioned) for v in leaves)
  for v in leaves:
    assert len(v.names) == v.value.ndim


def test_bad_teacher_configs_raise():
  with pytest.raises(ValueError, match="unknown teacher"):
    teachers.build_teacher(ml_collections.ConfigDict(dict(name="nope")))
  with pytest.raises(ValueError, match="unknown model"):
    models.make_model(ml_collections.ConfigDict(dict(name="resnet")), (2,))
  with pytest.raises(ValueError, match="unknown mlp model keys"):
    models.make_model(
      ml_collections.ConfigDict(dict(name="mlp", widht=3)), (2,)
    )
