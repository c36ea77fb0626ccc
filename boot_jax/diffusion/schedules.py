"""Noise schedules: DDPM beta tables and closed-form VP schedules.

Everything here is pure and jittable. The forward process is variance
preserving, `x_t = alpha_t * x_0 + sigma_t * eps`, with `t` running from the
clean end to the noise end `T`. Two families of schedules share one interface:

* `DiscreteSchedule`: a DDPM table `alphas_cumprod[0..T-1]` as used by DDPM,
  Stable Diffusion and DeepFloyd IF. Times are integer timesteps; the extra
  time `-1` is the clean end of DDIM sampling, whose `alphas_cumprod` is 1
  (`set_alpha_to_one=True`) or `alphas_cumprod[0]`.
* `ContinuousSchedule`: closed-form schedules on `t in [0, 1]`: VP
  (cosine, linear) and the rectified flow `x_t = (1 - t) x_0 + t eps`
  (Stable Diffusion 3's and FLUX's path, with its time shift).

Both give `alpha`, `sigma` and the descending DDIM `timesteps`; `lambda_` is
the negative half log-SNR `log(sigma / alpha)` for any array of times, and
`make_schedule` builds either from a config section. Conversions between
network outputs and the DDIM step live in `boot_jax.diffusion`, which
re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------
# Discrete tables.


def _betas_for_alpha_bar(num_steps: int, max_beta: float = 0.999):
  """The squaredcos_cap_v2 betas (Nichol & Dhariwal), in float64."""

  def alpha_bar(t):
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

  betas = [
    min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
    for i in range(num_steps)
  ]
  return np.asarray(betas, np.float64)


def make_betas(
  kind: str,
  num_steps: int = 1000,
  beta_start: float = 0.0001,
  beta_end: float = 0.02,
) -> np.ndarray:
  """Returns the float32 beta table of a named DDPM schedule.

  The tables follow diffusers' definitions (the values are computed in
  float32 where diffusers does so, so that the cumulative products agree to
  the last bit as far as possible):

  * linear: `beta_i = linspace(beta_start, beta_end)`.
  * scaled_linear (Stable Diffusion): `beta_i = linspace(sqrt(b0), sqrt(b1))^2`.
  * squaredcos_cap_v2: the cosine `alpha_bar` of Nichol & Dhariwal, capped
    at 0.999.
  """
  if num_steps <= 0:
    raise ValueError(f"num_steps must be positive, got {num_steps}")
  if kind == "linear":
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float32)
  elif kind == "scaled_linear":
    betas = (
      np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float32)
      ** 2
    )
  elif kind == "squaredcos_cap_v2":
    betas = _betas_for_alpha_bar(num_steps).astype(np.float32)
  else:
    raise ValueError(
      f"unknown beta schedule {kind!r}; expected linear, scaled_linear or "
      "squaredcos_cap_v2"
    )
  return betas.astype(np.float32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
  """Cumulative product of float32 factors, accumulated in float64.

  torch.cumprod accumulates float32 in double on the CPU; doing the same
  makes our tables bit-identical to diffusers' for identical betas.
  """
  return np.cumprod(np.asarray(x, np.float32).astype(np.float64)).astype(
    np.float32
  )


@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteSchedule:
  """A DDPM noise table read at integer timesteps.

  Attributes:
    alphas_cumprod: float32 array `[T]`, `abar_t` for `t = 0..T-1`.
    final_alphas_cumprod: `abar` at the clean end (time -1): 1.0 with
      diffusers' `set_alpha_to_one=True`, else `alphas_cumprod[0]`.
  """

  alphas_cumprod: np.ndarray
  final_alphas_cumprod: float = 1.0

  kind = "discrete"

  @classmethod
  def from_betas(
    cls, betas: np.ndarray, set_alpha_to_one: bool = True
  ) -> DiscreteSchedule:
    abar = _cumprod_f32(1.0 - np.asarray(betas, np.float32))
    final = 1.0 if set_alpha_to_one else float(abar[0])
    return cls(alphas_cumprod=abar, final_alphas_cumprod=final)

  @classmethod
  def named(
    cls,
    kind: str,
    num_steps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    set_alpha_to_one: bool = True,
  ) -> DiscreteSchedule:
    betas = make_betas(kind, num_steps, beta_start, beta_end)
    return cls.from_betas(betas, set_alpha_to_one)

  @property
  def num_train_steps(self) -> int:
    return int(self.alphas_cumprod.shape[0])

  @property
  def t_max(self) -> float:
    """The noise end T: the last timestep of the table."""
    return float(self.num_train_steps - 1)

  @property
  def t_clean(self) -> float:
    """The time of the clean end of sampling."""
    return -1.0

  def alpha_sigma(self, t):
    """`(alpha_t, sigma_t)` gathered from tables rounded as diffusers does.

    The tables hold `sqrt(abar)` and `sqrt(1 - abar)` of the float32 `abar`
    (with `1 - abar` rounded to float32 first), so no square root is left
    for XLA to rewrite into a less accurate reciprocal square root.
    """
    t = jnp.asarray(t)
    idx = jnp.clip(t, 0, self.num_train_steps - 1).astype(jnp.int32)
    abar = np.asarray(self.alphas_cumprod, np.float32)
    alphas, sigmas = np.sqrt(abar), np.sqrt(np.float32(1.0) - abar)
    final = np.float32(self.final_alphas_cumprod)
    final_alpha = np.sqrt(final)
    final_sigma = np.sqrt(np.float32(1.0) - final)
    alpha = jnp.where(t < 0, final_alpha, jnp.asarray(alphas)[idx])
    sigma = jnp.where(t < 0, final_sigma, jnp.asarray(sigmas)[idx])
    return alpha, sigma

  def timesteps(
    self, num_steps: int, spacing: str = "trailing", steps_offset: int = 0
  ) -> np.ndarray:
    """The descending DDIM timesteps with diffusers' spacings.

    Args:
      num_steps: number of model calls.
      spacing: 'leading' (multiples of T // n, plus `steps_offset`),
        'trailing' (round(T - i * T / n) - 1, ending at T - 1) or 'linspace'.
      steps_offset: added to 'leading' timesteps (Stable Diffusion uses 1).

    Returns:
      int64 array `[num_steps]`, descending.
    """
    n_train = self.num_train_steps
    if not 0 < num_steps <= n_train:
      raise ValueError(
        f"DDIM needs 1..{n_train} steps for this table, got {num_steps}"
      )
    if spacing == "leading":
      ratio = n_train // num_steps
      ts = (np.arange(num_steps) * ratio).round()[::-1] + steps_offset
    elif spacing == "trailing":
      ratio = n_train / num_steps
      ts = np.round(np.arange(n_train, 0, -ratio)) - 1
    elif spacing == "linspace":
      ts = np.linspace(0, n_train - 1, num_steps).round()[::-1]
    else:
      raise ValueError(
        f"unknown timestep spacing {spacing!r}; expected leading, trailing "
        "or linspace"
      )
    return ts.astype(np.int64)


_CONTINUOUS_KINDS = ("cosine", "linear", "rectified_flow")


def shift_time(t, shift: float):
  """SD3's time shift `shift t / (1 + (shift - 1) t)`: more of a sampler's
  steps at high noise for `shift > 1`; 0 and 1 stay fixed."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def exponential_shift(t, mu: float):
  """FLUX's resolution-dependent time shift `e^mu / (e^mu + 1 / t - 1)`:
  SD3's shift with `shift = e^mu` (diffusers' `time_shift_type=
  'exponential'`)."""
  return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def resolution_mu(
  image_seq_len: int,
  base_seq_len: int = 256,
  max_seq_len: int = 4096,
  base_shift: float = 0.5,
  max_shift: float = 1.15,
) -> float:
  """FLUX's `mu` for a latent of `image_seq_len` tokens: linear from
  `base_shift` at `base_seq_len` tokens to `max_shift` at `max_seq_len`
  (the defaults: FLUX.1's scheduler config; 4096 tokens is 1024 px)."""
  slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
  return image_seq_len * slope + base_shift - slope * base_seq_len


@dataclasses.dataclass(frozen=True, eq=False)
class ContinuousSchedule:
  """A closed-form schedule on `t in [0, 1]`.

  * cosine: `alpha(t) = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s))`,
    `s = 0.008`; `alpha(1) = 0`, `alpha(0) = 1`.
  * linear (VP-SDE): `log alpha(t) = -(b1 - b0) t^2 / 4 - b0 t / 2` with
    `b0 = 0.1`, `b1 = 20`.
  * rectified_flow: `alpha(t) = 1 - t`, `sigma(t) = t` (not variance
    preserving); `t` is diffusers' sigma, the network's timestep `1000 t`.

  `sigma = sqrt(1 - alpha^2)` in the VP ones.
  """

  name: str = "cosine"
  beta_min: float = 0.1
  beta_max: float = 20.0
  cosine_s: float = 0.008
  # rectified_flow: the sampler's time shift (SD3: 3.0) and the training
  # steps of the scheduler it follows (its smallest time is 1 / steps);
  # `mu` set: FLUX's resolution-dependent shift instead
  # (`exponential_shift`, `resolution_mu`).
  shift: float = 1.0
  num_train_steps: int = 1000
  mu: float | None = None

  kind = "continuous"

  def __post_init__(self):
    if self.name not in _CONTINUOUS_KINDS:
      raise ValueError(
        f"unknown continuous schedule {self.name!r}; expected one of "
        f"{_CONTINUOUS_KINDS}"
      )

  t_max = 1.0
  t_clean = 0.0

  def alpha_sigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    if self.name == "cosine":
      s = self.cosine_s
      phi = 0.5 * jnp.pi * (t + s) / (1.0 + s)
      phi0 = 0.5 * math.pi * s / (1.0 + s)
      alpha = jnp.clip(jnp.cos(phi) / math.cos(phi0), 0.0, 1.0)
      sigma = jnp.sqrt(jnp.clip(1.0 - alpha**2, 0.0, 1.0))
    elif self.name == "rectified_flow":
      alpha, sigma = 1.0 - t, t
    else:
      b0, b1 = self.beta_min, self.beta_max
      log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
      alpha = jnp.exp(log_alpha)
      sigma = jnp.sqrt(-jnp.expm1(2.0 * log_alpha))
    return alpha, sigma

  def timesteps(self, num_steps: int, spacing: str = "uniform") -> np.ndarray:
    """Descending times `1, 1 - 1/n, ..., 1/n` (the clean end 0 excluded).

    rectified_flow: the times of diffusers' `FlowMatchEulerDiscreteScheduler`
    (SD3's sampler): `shift_time(linspace(1, t_min, n))` with `t_min =
    shift_time(1 / num_train_steps)`, in float32 as it computes them; with
    `mu` (its `use_dynamic_shifting`), `exponential_shift(linspace(1,
    1 / num_train_steps, n), mu)`.
    """
    if num_steps <= 0:
      raise ValueError(f"DDIM needs at least one step, got {num_steps}")
    if self.name == "rectified_flow" and self.mu is not None:
      # diffusers with use_dynamic_shifting: the unshifted training times'
      # range, shifted once, by e^mu.
      t_min = np.float32(1.0 / self.num_train_steps)
      ts = np.linspace(1.0, t_min, num_steps, dtype=np.float32)
      return np.asarray(exponential_shift(ts, self.mu), np.float32).astype(
        np.float64
      )
    if self.name == "rectified_flow":
      t_min = shift_time(np.float32(1.0 / self.num_train_steps), self.shift)
      ts = np.linspace(1.0, t_min, num_steps, dtype=np.float32)
      return shift_time(ts, np.float32(self.shift)).astype(np.float64)
    if spacing not in ("uniform", "trailing"):
      raise ValueError(
        f"continuous schedules support 'uniform' spacing, got {spacing!r}"
      )
    return np.linspace(1.0, 0.0, num_steps + 1)[:-1].astype(np.float64)


Schedule = DiscreteSchedule | ContinuousSchedule


def lambda_(schedule: Schedule, t):
  """Negative half log-SNR `log(sigma_t / alpha_t)`; rises with t."""
  alpha, sigma = schedule.alpha_sigma(t)
  return jnp.log(sigma) - jnp.log(alpha)


def make_schedule(config) -> Schedule:
  """Builds a schedule from a config section (see configs/ for keys).

  Keys: `type` ('discrete' or 'continuous'); for discrete `beta_schedule`,
  `num_train_steps`, `beta_start`, `beta_end`, `set_alpha_to_one`; for
  continuous `name` ('cosine', 'linear' or 'rectified_flow', with
  `shift`, `num_train_steps` and optionally FLUX's `mu`).
  """
  if config.type == "discrete":
    return DiscreteSchedule.named(
      config.beta_schedule,
      num_steps=config.num_train_steps,
      beta_start=config.beta_start,
      beta_end=config.beta_end,
      set_alpha_to_one=config.set_alpha_to_one,
    )
  if config.type == "continuous":
    if config.name == "rectified_flow":
      mu = config.get("mu")
      return ContinuousSchedule(
        config.name,
        shift=float(config.get("shift") or 1.0),
        num_train_steps=int(config.get("num_train_steps") or 1000),
        mu=None if mu is None else float(mu),
      )
    return ContinuousSchedule(config.name)
  raise ValueError(
    f"unknown schedule type {config.type!r}; expected discrete or continuous"
  )
