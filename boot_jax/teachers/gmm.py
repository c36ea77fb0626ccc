"""The analytic teacher: a Gaussian mixture with a closed-form denoiser.

Data `x0 ~ sum_k w_k N(mu_k, s_k^2 I)` in any dimension. Under the VP forward
process `x_t | k ~ N(alpha mu_k, v_k I)` with `v_k = alpha^2 s_k^2 + sigma^2`,
so the ideal x0-prediction is exact:

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k)),
    r_k(x_t) ∝ w_k N(x_t; alpha mu_k, v_k I).

Class-conditional form: label `c` selects component `c` (r = one-hot), the
null label (= num_components) the whole mixture. Classifier-free guidance
then has the exact target `f(null) + w (f(c) - f(null))`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.diffusion import predictions
from boot_jax.teachers import base

LAYOUTS = ("circle", "random")


def mixture_arrays(
  dim: int,
  num_components: int,
  scale: float,
  std: float,
  seed: int,
  layout: str = "circle",
):
  """The explicit mixture of (dim, num_components, scale, std, seed).

  * circle: means equally spaced on a circle of radius `scale` in the first
    two coordinates (dim >= 2), zero elsewhere.
  * random: means drawn `N(0, scale^2 / dim I)` from `seed`, so that their
    norms are about `scale`.

  All components have standard deviation `std` and equal weights.

  Returns:
    `(means [K, D], stds [K], weights [K])` as float64 numpy arrays.
  """
  if dim < 1 or num_components < 1:
    raise ValueError("the mixture needs dim >= 1 and num_components >= 1")
  if std <= 0:
    raise ValueError(f"component std must be positive, got {std}")
  if layout == "circle":
    if dim < 2:
      raise ValueError("the circle layout needs dim >= 2")
    angle = 2 * math.pi * np.arange(num_components) / num_components
    means = np.zeros((num_components, dim))
    means[:, 0] = scale * np.cos(angle)
    means[:, 1] = scale * np.sin(angle)
  elif layout == "random":
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((num_components, dim)) * scale / math.sqrt(dim)
  else:
    raise ValueError(f"unknown mixture layout {layout!r}; expected {LAYOUTS}")
  stds = np.full((num_components,), float(std))
  weights = np.full((num_components,), 1.0 / num_components)
  return means, stds, weights


def fill(config) -> None:
  """Fills `means`, `stds` and `weights` into a mutable copy of a gmm
  `teacher` section (`teachers.resolved` makes the copy).

  Explicit arrays already present are kept (and checked); otherwise they
  are computed from (dim, num_components, scale, std, seed, layout), so the
  resolved config records the exact mixture that was used.
  """
  if config.get("means") is None:
    means, stds, weights = mixture_arrays(
      config.dim,
      config.num_components,
      config.scale,
      config.std,
      config.seed,
      config.layout,
    )
    config.means = means.tolist()
    config.stds = stds.tolist()
    config.weights = weights.tolist()
  means = np.asarray(config.means, np.float64)
  stds = np.asarray(config.stds, np.float64)
  weights = np.asarray(config.weights, np.float64)
  k = means.shape[0]
  if means.ndim != 2 or stds.shape != (k,) or weights.shape != (k,):
    raise ValueError(
      "teacher.means must be [K, D] with stds and weights of length K; got "
      f"{means.shape}, {stds.shape}, {weights.shape}"
    )
  if np.any(stds <= 0) or np.any(weights < 0) or weights.sum() <= 0:
    raise ValueError("mixture stds must be > 0 and weights >= 0, not all 0")
  config.dim = int(means.shape[1])
  config.num_components = int(k)


def make_params(means, stds, weights):
  """The teacher's parameter pytree (float32)."""
  weights = np.asarray(weights, np.float64)
  return {
    "means": jnp.asarray(means, jnp.float32),
    "stds": jnp.asarray(stds, jnp.float32),
    "log_weights": jnp.asarray(np.log(weights / weights.sum()), jnp.float32),
  }


def component_log_prior(params, cond, batch: int, conditional: bool):
  """log w_k per example `[B, K]`; a label selects its component."""
  log_w = jnp.broadcast_to(
    params["log_weights"], (batch,) + params["log_weights"].shape
  )
  if not conditional or cond is None:
    return log_w
  k = params["log_weights"].shape[0]
  onehot = jnp.arange(k)[None, :] == cond[:, None]
  is_null = (cond == k)[:, None]
  return jnp.where(is_null, log_w, jnp.where(onehot, 0.0, -jnp.inf))


def posterior_mean(params, x_t, alpha, sigma, log_prior):
  """`E[x0 | x_t]` and the responsibilities, for per-example alpha, sigma.

  Args:
    params: the mixture (`means [K, D]`, `stds [K]`).
    x_t: `[B, D]`.
    alpha, sigma: `[B]`.
    log_prior: `[B, K]` log component weights.

  Returns:
    `(x0_hat [B, D], r [B, K])`.
  """
  mu, s = params["means"], params["stds"]
  d = x_t.shape[-1]
  a = alpha[:, None]
  var = a**2 * s[None, :] ** 2 + sigma[:, None] ** 2  # [B, K]
  diff = x_t[:, None, :] - a[:, :, None] * mu[None]  # [B, K, D]
  log_lik = -0.5 * jnp.sum(diff**2, -1) / var - 0.5 * d * jnp.log(var)
  r = jax.nn.softmax(log_prior + log_lik, axis=-1)
  gain = a * s[None, :] ** 2 / var  # [B, K]
  comp_mean = mu[None] + gain[:, :, None] * diff
  return jnp.einsum("bk,bkd->bd", r, comp_mean), r


def make_apply(schedule: predictions.Schedule, conditional: bool):
  def apply(params, x_t, t, cond=None):
    alpha, sigma = schedule.alpha_sigma(t)
    log_prior = component_log_prior(params, cond, x_t.shape[0], conditional)
    x0, _ = posterior_mean(params, x_t, alpha, sigma, log_prior)
    return x0

  return apply


def split_params(params, copies: int, jitter: float, key):
  """The mixture with each component as `copies` equal-weight copies whose
  means are moved by `jitter` x the component's std (offsets centred per
  component, so the density changes only at second order: its covariance
  grows by about `(jitter s_k)^2`). Shapes `means [K, C, D]`, `stds [K,
  C]`, `log_weights [K, C]`: a family of `K C` components that can take
  shapes one component cannot (a heavier tail, a skew), starting at the
  mixture itself; the copies differ so that their gradients do."""
  mu, s, lw = params["means"], params["stds"], params["log_weights"]
  k, d = mu.shape
  offsets = jax.random.normal(key, (k, copies, d))
  offsets = offsets - jnp.mean(offsets, axis=1, keepdims=True)
  return {
    "means": mu[:, None] + jitter * s[:, None, None] * offsets,
    "stds": jnp.broadcast_to(s[:, None], (k, copies)),
    "log_weights": jnp.broadcast_to(lw[:, None], (k, copies))
    - math.log(copies),
  }


def make_split_apply(schedule: predictions.Schedule, conditional: bool):
  """The exact x0-prediction of a `split_params` mixture; a label selects
  its component's copies (renormalised among themselves)."""

  def apply(params, x_t, t, cond=None):
    alpha, sigma = schedule.alpha_sigma(t)
    mu, lw = params["means"], params["log_weights"]
    k, c, d = mu.shape
    per_class = {"log_weights": jax.nn.logsumexp(lw, axis=-1)}
    prior = component_log_prior(per_class, cond, x_t.shape[0], conditional)
    within = lw - per_class["log_weights"][:, None]
    log_prior = (prior[:, :, None] + within[None]).reshape(-1, k * c)
    flat = {"means": mu.reshape(k * c, d), "stds": params["stds"].reshape(-1)}
    return posterior_mean(flat, x_t, alpha, sigma, log_prior)[0]

  return apply


def sample(params, key, num: int, labels=None):
  """Exact samples from the mixture (or from the labelled components)."""
  k_comp, k_noise = jax.random.split(key)
  if labels is None:
    labels = jax.random.categorical(k_comp, params["log_weights"], shape=(num,))
  mu = params["means"][labels]
  noise = jax.random.normal(k_noise, mu.shape)
  return mu + params["stds"][labels][:, None] * noise, labels


def assign(params, x):
  """The most probable component of each clean point `[B, D] -> [B]`."""
  ones = jnp.ones(x.shape[:1])
  log_prior = jnp.broadcast_to(
    params["log_weights"], x.shape[:1] + params["log_weights"].shape
  )
  _, r = posterior_mean(params, x, ones, 0.0 * ones, log_prior)
  return jnp.argmax(r, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class MixtureTeacher(base.Teacher):
  """The analytic mixture: evaluated exactly (`mixture_eval.gmm_report`)."""

  evaluation: ClassVar[str] = "mixture"


def build(
  config, placement=None, dtype=None, attention: str = "auto"
) -> base.Teacher:
  """Builds the analytic teacher from a `teacher` config section.

  `placement` (see `network.build`) places the mixture's arrays; `dtype` is
  ignored (the closed form is always computed in float32), and so is
  `attention` (there is none).
  """
  del dtype, attention
  config = base.resolved(config, fill)
  schedule = predictions.make_schedule(config.schedule)
  params = make_params(config.means, config.stds, config.weights)
  if placement is not None:
    specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
    params = jax.device_put(params, placement(params, specs))
  conditional = bool(config.get("conditional", False))
  condition = (
    base.ConditionSpec("class", num_classes=config.num_components)
    if conditional
    else base.ConditionSpec()
  )
  return MixtureTeacher(
    name="gmm",
    apply=make_apply(schedule, conditional),
    params=params,
    schedule=schedule,
    prediction="x0",
    sample_shape=(config.dim,),
    condition=condition,
  )
