"""The one Teacher interface shared by every teacher family.

A teacher is a frozen diffusion model read as an x0-prediction. It bundles
its apply function, its parameters, its noise schedule, its native
prediction type, the shape of one sample and the kind of condition it reads.

Whatever differs between families is a field or a method here, overridden
by the family's subclass in `boot_jax/teachers/<family>.py`: how samples
become pixels (`pixels`: identity, or a VAE decode), text encoding
(`encode_text`, `prompt_set`), how the family's own pipelines space DDIM
steps (`ddim_spacing`), which evaluation applies (`evaluation`) and what
reference data it has (`reference_data`). Code outside the package reads
only these, never the family's name.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from boot_jax.config import defaults
from boot_jax.data import prompts as prompts_lib
from boot_jax.diffusion import predictions

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
    ddim_spacing: `(spacing, steps_offset)` of the teacher's reference
      DDIM (`diffusion` spacings: 'trailing', 'leading', 'linspace').

  Class attributes:
    evaluation: the report `boot_jax.evaluate` makes: 'images' (agreement,
      Frechet distances, speed) or 'mixture' (exact mixture checks).
  """

  evaluation: ClassVar[str] = "images"

  name: str
  apply: ApplyFn
  params: Any
  schedule: predictions.Schedule
  prediction: str
  sample_shape: tuple[int, ...]
  condition: ConditionSpec = ConditionSpec()
  module: Any = None
  null_embedding: Any = None
  ddim_spacing: tuple[str, int] = ("trailing", 0)

  def __post_init__(self):
    if self.prediction not in predictions.PREDICTIONS:
      raise ValueError(f"unknown prediction type {self.prediction!r}")

  @property
  def pixel_shape(self) -> tuple[int, ...]:
    """The shape of one output of `pixels` (one image, or one vector)."""
    return tuple(self.sample_shape)

  @property
  def is_image(self) -> bool:
    return len(self.pixel_shape) == 3

  def to_pixels(self, samples):
    """Samples -> what users see, traceable: images `[B, H, W, C]` clipped
    to [-1, 1] (a network's raw output may overshoot the data range) or
    vectors unchanged."""
    samples = jnp.asarray(samples, jnp.float32)
    return jnp.clip(samples, -1.0, 1.0) if self.is_image else samples

  def pixels(self, samples, batch_size: int = 16) -> np.ndarray:
    """`to_pixels` on host arrays, `batch_size` samples per call."""
    samples = np.asarray(samples)
    batch_size = max(1, int(batch_size))
    out = [
      np.asarray(self.to_pixels(samples[i : i + batch_size]), np.float32)
      for i in range(0, len(samples), batch_size)
    ]
    if not out:
      return np.zeros((0,) + self.pixel_shape, np.float32)
    return np.concatenate(out)

  def export_extras(self, out_dir: str, student, params) -> list[str]:
    """Family-specific export files written into `out_dir` (see
    `boot_jax.export`); returns their names. None by default."""
    del out_dir, student, params
    return []

  def export_readme(self) -> str:
    """Markdown about the family's export files, appended to the export's
    README.md (empty by default)."""
    return ""

  def encode_text(self, texts: Sequence[str]):
    """Prompt embeddings `[len(texts), *condition.shape]` (text teachers)."""
    raise ValueError(
      f"the {self.name} teacher is not text-to-image: it takes no prompts"
    )

  def prompts(self):
    """The training prompts of a text teacher (`prompts.PromptSet`; encoded
    on first use), or None."""
    return None

  def reference_data(self):
    """The data the teacher was trained on (evaluation only), or None."""
    return None

  def ddim_timesteps(self, steps: int):
    """Model-call times of the teacher's own DDIM with `steps` steps."""
    spacing, offset = self.ddim_spacing
    if offset:
      return self.schedule.timesteps(steps, spacing, offset)
    return self.schedule.timesteps(steps, spacing)

  def null_condition(self, batch: int):
    return self.condition.null(batch, self.null_embedding)

  def output(self, params, x_t, t, cond=None, guidance=None):
    """The native output, with classifier-free guidance when asked.

    With guidance `w` (a scalar or per-example `[B]`), the output is
    `out(null) + w * (out(c) - out(null))`; both branches run as one call
    of batch 2B. Guidance is linear in the output at fixed `(x_t, t)`, so
    guiding the native output equals guiding the x0-prediction.
    """
    fn = lambda x, s, c: self.apply(params, x, s, c)  # noqa: E731
    return self.guide(fn, x_t, t, cond, guidance)

  def guide(self, fn, x_t, t, cond=None, guidance=None):
    """`fn(x_t, t, c)` under this teacher's classifier-free guidance:
    `fn(null) + w * (fn(c) - fn(null))`, or `fn(c)` without guidance.

    `fn` is any network laid out like the teacher's (the teacher itself,
    the refinement's fake network); `t` a scalar or `[B]`.
    """
    t = jnp.broadcast_to(jnp.asarray(t), x_t.shape[:1])
    if guidance is None or self.condition.kind == "none":
      return fn(x_t, t, cond)
    null = self.null_condition(x_t.shape[0])
    both = fn(interleave(x_t, x_t), interleave(t, t), interleave(cond, null))
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
    return predictions.to_x0(out, x_t, alpha, sigma, self.prediction)

  def ddim(self, params, x_T, timesteps, cond=None, guidance=None, **kw):
    """The teacher's deterministic DDIM sampler from `x_T`; a family whose
    scheduler clips or thresholds its clean estimates says how in an
    `x0_fn` attribute (`predictions.x0_processing`)."""
    fn = lambda x, t: self.output(params, x, t, cond, guidance)  # noqa: E731
    kw.setdefault("x0_fn", getattr(self, "x0_fn", None))
    return predictions.ddim_sample(
      fn, x_T, self.schedule, timesteps, self.prediction, **kw
    )


DEFAULT_PROMPT_CACHE = os.path.join(
  os.path.expanduser("~"), ".cache", "boot_jax", "prompts"
)


def resolved(section, fill=None):
  """A mutable copy of a `teacher` section, `fill(copy)` applied (a
  family's derived fields); `section`, possibly read-only, is unchanged."""
  config = defaults.thaw(section)
  if fill is not None:
    fill(config)
  return config


def module_apply(module):
  """`apply(params, x_t, t, cond)` of a Flax network whose whole parameter
  tree is the teacher's `params` (our UNets, SD's and IF's)."""

  def apply(params, x_t, t, cond=None):
    return module.apply({"params": params}, x_t, t, cond)

  return apply


def text_teacher_fields(
  config, path: str, module, params, table, encode, encoders=("text_encoder",)
):
  """The fields a text-to-image family's teacher fills the same way: its
  name, network and parameters, noise table, the embedding of the
  negative prompt (guidance's unconditional branch) and the prompt loader
  of `config.prompts` (the encoder folders, which key the prompt cache,
  are `encoders` in `path`)."""
  return dict(
    name=config.name,
    apply=module_apply(module),
    params=params,
    schedule=predictions.make_schedule(ml_collections.ConfigDict(table)),
    module=module,
    null_embedding=encode([config.get("negative_prompt") or ""])[0],
    prompt_loader=prompt_loader(
      config,
      encode,
      os.path.join(path, encoders[0])
      if len(encoders) == 1
      else tuple(os.path.join(path, e) for e in encoders),
    ),
  )


def prompt_loader(config, encode, encoder_dir):
  """`() -> PromptSet` for a text teacher's config section, loaded on
  first call and kept (None without `config.prompts`).

  Reads `prompts`, `prompt_column`, `prompt_cache` and `text_encoding`;
  an unknown encoding is refused here, before anything is read.
  """
  encoding = config.get("text_encoding") or "online"
  known = prompts_lib.ENCODINGS
  if encoding not in known:
    raise prompts_lib.PromptError(
      f"teacher.text_encoding={encoding!r}: expected one of {known}"
    )
  if not config.get("prompts"):
    return None
  return functools.cache(
    functools.partial(
      prompts_lib.load,
      config.prompts,
      config.get("prompt_column") or "prompt",
      encode,
      config.get("prompt_cache") or DEFAULT_PROMPT_CACHE,
      encoding,
      encoder_dir,
    )
  )
