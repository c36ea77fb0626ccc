"""The one Teacher interface shared by every teacher family.

A teacher is a frozen diffusion model read as an x0-prediction. It bundles
its apply function, its parameters, its noise schedule, its native
prediction type, the shape of one sample and the kind of condition it reads.
Families build teachers from config sections (see `boot_jax.teachers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from boot_jax import diffusion

CONDITION_KINDS = ("none", "class", "text")


@dataclasses.dataclass(frozen=True)
class ConditionSpec:
  """What a model is conditioned on.

  Attributes:
    kind: 'none', 'class' (integer labels) or 'text' (embeddings).
    num_classes: for 'class': labels are 0..num_classes-1 and the null
      label (classifier-free guidance's unconditional branch) is
      `num_classes`.
    shape: for 'text': the shape of one embedding, e.g. (77, 768).
  """

  kind: str = "none"
  num_classes: int = 0
  shape: tuple[int, ...] = ()

  def __post_init__(self):
    if self.kind not in CONDITION_KINDS:
      raise ValueError(
        f"unknown condition kind {self.kind!r}; expected {CONDITION_KINDS}"
      )
    if self.kind == "class" and self.num_classes <= 0:
      raise ValueError("a class-conditional model needs num_classes > 0")

  @property
  def null_label(self) -> int:
    return self.num_classes

  def null(self, batch: int, like=None):
    """The null condition for a batch (None for unconditional models)."""
    if self.kind == "none":
      return None
    if self.kind == "class":
      return jnp.full((batch,), self.null_label, jnp.int32)
    if like is not None:
      # Text: the caller supplies the empty prompt's embedding.
      return jnp.broadcast_to(like, (batch,) + tuple(self.shape))
    return jnp.zeros((batch,) + tuple(self.shape), jnp.float32)


def interleave(a, b):
  """`[B, ...]`, `[B, ...]` -> `[2B, ...]` as a0, b0, a1, b1, ...

  Unlike concatenation this keeps a batch that is sharded along its first
  axis sharded the same way, with no communication.
  """
  return jax.tree.map(
    lambda u, v: jnp.stack([u, v], axis=1).reshape((-1,) + u.shape[1:]), a, b
  )


def deinterleave(ab):
  """The inverse of `interleave`: `[2B, ...] -> ([B, ...], [B, ...])`."""
  pairs = ab.reshape((-1, 2) + ab.shape[1:])
  return pairs[:, 0], pairs[:, 1]


ApplyFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
  """A frozen diffusion model.

  Attributes:
    name: the family name it was built by.
    apply: `(params, x_t [B, ...], t [B], cond or None) -> native output`.
    params: the frozen parameters (any pytree).
    schedule: its noise schedule; `t` is in the schedule's time units.
    prediction: native output type: 'eps', 'v' or 'x0'.
    sample_shape: shape of one sample, e.g. (2,) or (16, 16, 1).
    condition: what it is conditioned on.
    module: the Flax module behind `apply` (None for analytic teachers);
      students of learned teachers copy it.
    null_embedding: for text teachers, the empty prompt's embedding.
    extras: family-specific things (e.g. the mixture's arrays).
  """

  name: str
  apply: ApplyFn
  params: Any
  schedule: diffusion.Schedule
  prediction: str
  sample_shape: tuple[int, ...]
  condition: ConditionSpec = ConditionSpec()
  module: Any = None
  null_embedding: Any = None
  extras: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.prediction not in diffusion.PREDICTIONS:
      raise ValueError(f"unknown prediction type {self.prediction!r}")

  def null_condition(self, batch: int):
    return self.condition.null(batch, self.null_embedding)

  def output(self, params, x_t, t, cond=None, guidance=None):
    """The native output, with classifier-free guidance when asked.

    With guidance `w` (a scalar or per-example `[B]`), the output is
    `out(null) + w * (out(c) - out(null))`; both branches run as one call
    of batch 2B. Guidance is linear in the output at fixed `(x_t, t)`, so
    guiding the native output equals guiding the x0-prediction.
    """
    t = jnp.broadcast_to(jnp.asarray(t), x_t.shape[:1])
    if guidance is None or self.condition.kind == "none":
      return self.apply(params, x_t, t, cond)
    null = self.null_condition(x_t.shape[0])
    both = self.apply(
      params, interleave(x_t, x_t), interleave(t, t), interleave(cond, null)
    )
    out_c, out_null = deinterleave(both)
    w = jnp.asarray(guidance, out_c.dtype)
    w = w.reshape(w.shape + (1,) * (out_c.ndim - w.ndim))
    return out_null + w * (out_c - out_null)

  def x0(self, params, x_t, t, cond=None, guidance=None):
    """The (guided) x0-prediction `f_w(x_t, t, c)`."""
    out = self.output(params, x_t, t, cond, guidance)
    alpha, sigma = self.schedule.alpha_sigma(
      jnp.broadcast_to(jnp.asarray(t), x_t.shape[:1])
    )
    return diffusion.to_x0(out, x_t, alpha, sigma, self.prediction)

  def ddim(self, params, x_T, timesteps, cond=None, guidance=None, **kw):
    """The teacher's deterministic DDIM sampler from `x_T`."""
    fn = lambda x, t: self.output(params, x, t, cond, guidance)  # noqa: E731
    return diffusion.ddim_sample(
      fn, x_T, self.schedule, timesteps, self.prediction, **kw
    )
