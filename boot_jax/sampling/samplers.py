"""The samplers of a loaded work directory: student, teacher or hybrid,
jitted on the mesh and streamed batch by batch (what `python -m
boot_jax.sample` runs, and what evaluation measures; the samplers and the
sample file are described in boot_jax/sample.py).

`noise` rows depend only on the seed and the row's index, so the same seed
gives the same eps for every sampler, batch size and `--num`.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from boot_jax.diffusion import predictions
from boot_jax.runtime import sharding
from boot_jax.sampling import inference

SAMPLERS = ("student", "teacher", "hybrid")


class SampleError(ValueError):
  """A sampling request that cannot be carried out."""


def hybrid_timesteps(model: inference.Model, steps: int) -> np.ndarray:
  """The last `steps` model-call times of the training grid, descending.

  The first is where the student jumps to; the teacher's DDIM runs from
  there through the rest to the clean end.
  """
  n = model.grid.num_steps
  if not 1 <= steps <= n:
    raise SampleError(
      f"hybrid needs 1 <= --steps <= {n} (the student's grid), got {steps}"
    )
  return model.grid.times[1 : steps + 1][::-1].astype(np.float64)


def resolve_guidance(
  model: inference.Model,
  guidance=None,
  kind: str = "student",
  allow_extrapolation: bool = False,
):
  """The w to sample with, checked against what the student was trained for.

  Without `guidance`: the trained w, or the middle of a guidance-conditioned
  student's range. A given w must be finite and >= 0; outside a guided
  student's range it is refused unless `allow_extrapolation`; the student
  sampler of a fixed-w student refuses any other w (it cannot change it).
  """
  if guidance is None:
    return model.default_guidance()
  w = float(guidance)
  if not math.isfinite(w) or w < 0:
    raise SampleError(f"--guidance must be finite and >= 0, got {guidance}")
  if model.teacher.condition.kind == "none":
    raise SampleError(
      "--guidance needs a conditional teacher; this one is unconditional"
    )
  if model.guided:
    lo, hi = model.guidance_range
    if not lo <= w <= hi and not allow_extrapolation:
      raise SampleError(
        f"--guidance {w:g} is outside [{lo:g}, {hi:g}], the range the "
        "student was trained for; pass --allow_extrapolation to sample "
        "there anyway"
      )
  elif model.student is not None and kind == "student":
    trained = model.trained_guidance
    if trained is None or not math.isclose(w, float(trained)):
      raise SampleError(
        f"this student was distilled at a fixed guidance w={trained}: "
        f"--guidance {w:g} cannot change its one step (use the teacher or "
        "hybrid sampler, or a guidance-conditioned student)"
      )
  return w


def make_sampler(model: inference.Model, params, kind: str, steps, guidance):
  """A `(eps, cond) -> samples` function for one sampler (not jitted).

  `guidance` guides the teacher's steps and, for a guidance-conditioned
  student, is the w the student reads.
  """
  student, teacher = model.student, model.teacher
  if kind not in SAMPLERS:
    raise SampleError(f"unknown sampler {kind!r}; expected {SAMPLERS}")
  if student is None and kind != "teacher":
    raise SampleError(
      f"a teacher work directory has no student: --sampler {kind} is not "
      "possible; use --sampler teacher"
    )
  w_student = guidance if model.guided else None
  if kind == "student":
    return lambda e, c: student.generate(params, e, c, w_student)
  if steps < 1:
    raise SampleError(f"--steps must be >= 1 for the {kind} sampler")
  if kind == "teacher":
    ts = teacher.ddim_timesteps(steps)
    return lambda e, c: teacher.ddim(teacher.params, e, ts, c, guidance)
  ts = hybrid_timesteps(model, steps)

  def hybrid(e, c):
    x = student.x_t(params, e, ts[0], c, w_student)
    fn = lambda x, t: teacher.output(teacher.params, x, t, c, guidance)  # noqa: E731
    return predictions.ddim_sample(
      fn, x, teacher.schedule, ts, teacher.prediction
    )

  return hybrid


def jit_on_mesh(model: inference.Model, fn):
  """`fn(eps, cond)` jitted with the batch split over the mesh and the
  result gathered (so any process can read it)."""
  batch = sharding.batch_sharding(model.mesh)
  return jax.jit(
    fn,
    in_shardings=(batch, batch),
    out_shardings=sharding.replicated(model.mesh),
  )


def batch_for(
  model: inference.Model, num: int, batch_size: int, strict: bool = True
) -> int:
  """The batch actually run: `batch_size`, or less for a small request
  (rounded up to a multiple of the batch's devices).

  With `strict`, a `batch_size` that does not split over the devices is
  refused (a user's `--batch_size`); otherwise it is rounded up to one that
  does (a config's `eval.batch_size`, written for another machine).
  """
  shards = model.mesh.shape["data"] * model.mesh.shape["fsdp"]
  if not strict:
    batch_size = -(-max(batch_size, 1) // shards) * shards
  inference.check_batch(model.mesh, batch_size)
  return min(batch_size, -(-num // shards) * shards)


class Conditions:
  """The condition of each example index, for any slice of a request."""

  def __init__(self, model: inference.Model, labels=None, texts=None):
    spec = model.teacher.condition
    self.model = model
    self.labels = self.texts = self.prompt_set = None
    if spec.kind != "class" and labels:
      raise SampleError(
        "--label given but the teacher is not class-conditional"
      )
    if spec.kind != "text" and texts:
      raise SampleError("--prompt given but the teacher is not text-to-image")
    if spec.kind == "class":
      if labels:
        bad = [v for v in labels if not 0 <= v <= spec.num_classes]
        if bad:
          raise SampleError(
            f"--label {bad[0]} is out of range 0..{spec.num_classes} "
            f"({spec.num_classes} is the null label)"
          )
        self.labels = np.asarray(labels, np.int32)
      else:
        self.labels = np.arange(spec.num_classes, dtype=np.int32)
    elif spec.kind == "text":
      if texts:
        self.texts = list(texts)
      else:
        self.prompt_set = model.teacher.prompts()
        if self.prompt_set is None:
          raise SampleError(
            "give --prompt or --prompts_file (the run has no training prompts)"
          )

  def rows(self, start: int, num: int):
    """The conditions of examples start..start+num-1 (None: unconditional)."""
    idx = np.arange(start, start + num)
    if self.labels is not None:
      return self.labels[idx % len(self.labels)]
    if self.texts is not None:
      texts = [self.texts[i % len(self.texts)] for i in idx]
      return np.asarray(self.model.teacher.encode_text(texts), np.float32)
    if self.prompt_set is not None:
      return self.prompt_set.rows(idx % len(self.prompt_set))
    return None


def pad_rows(a, rows: int):
  """`a` with its last row repeated up to `rows` rows (one compiled shape)."""
  a = np.asarray(a)
  if len(a) == rows:
    return a
  return np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)])


def stream(
  fn, eps_rows, cond_rows, num: int, batch: int, consume, pixels, progress=None
):
  """Runs `fn` over `num` examples in batches of `batch` (the last padded).

  Args:
    fn: jitted `(eps, cond) -> samples` (compiled here for the batch shape).
    eps_rows, cond_rows: `(start, n) -> rows` of noise and conditions.
    num: how many examples.
    batch: rows per call.
    consume: `(start, eps, samples, pixels) -> None` for each batch.
    pixels: samples -> pixels.
    progress: `(done, num) -> None`, called about every 10 s (or None).

  Returns:
    images/s of the sampler alone (compilation and I/O excluded).
  """
  seconds, timed = 0.0, 0
  last_report = time.perf_counter()
  for start in range(0, num, batch):
    if progress is not None and time.perf_counter() - last_report > 10:
      progress(start, num)
      last_report = time.perf_counter()
    n = min(batch, num - start)
    eps = eps_rows(start, n)
    cond = cond_rows(start, n)
    args = (
      pad_rows(eps, batch),
      None if cond is None else pad_rows(cond, batch),
    )
    if start == 0:
      fn = fn.lower(*args).compile()  # compiled outside the timing
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    seconds += time.perf_counter() - t0
    timed += batch
    samples = np.asarray(out)[:n]
    if not np.all(np.isfinite(samples)):
      bad = int(np.sum(~np.isfinite(samples).reshape(n, -1).all(-1)))
      raise SampleError(
        f"{bad} of the samples {start}..{start + n - 1} are NaN or infinite: "
        "the checkpoint's parameters (or the guidance) are not usable"
      )
    consume(start, eps, samples, pixels(samples))
  return timed / seconds if seconds > 0 else float("nan")


def run_sampler(fn, eps, cond, batch_size: int):
  """In-memory sampling of given arrays; returns `(samples, images/s)`.

  Every call is `batch_size` rows (the last padded), even for fewer
  examples: the batch is what splits over the devices (`batch_for`).
  """
  eps = np.asarray(eps)
  cond = None if cond is None else np.asarray(cond)
  out = []
  rate = stream(
    fn,
    lambda s, n: eps[s : s + n],
    lambda s, n: None if cond is None else cond[s : s + n],
    len(eps),
    batch_size,
    lambda s, e, smp, pix: out.append(smp),
    lambda smp: None,
  )
  return np.concatenate(out), rate


def stream_student(
  model, params, num, seed, guidance, batch_size, conds, consume, printer
):
  """One-step student images for examples 0..num-1 (noise row i of
  `sample --seed`, `conds`' condition i), handed to `consume(pixels)`
  batch by batch as `sample` writes them. Returns `(w, images/s)`."""
  w = resolve_guidance(model, guidance, "student", False)
  fn = jit_on_mesh(model, make_sampler(model, params, "student", 1, w))
  shape = tuple(model.teacher.sample_shape)
  batch = batch_for(model, num, batch_size, strict=False)
  rate = stream(
    fn,
    lambda s, k: inference.noise(shape, k, seed, s),
    conds.rows,
    num,
    batch,
    lambda s, e, smp, pix: consume(pix),
    lambda smp: model.teacher.pixels(smp, batch),
    progress=lambda done, total: printer(
      f"evaluate: {done:,}/{total:,} images"
    ),
  )
  return w, rate


def run(
  model: inference.Model,
  params,
  consume,
  *,
  num: int,
  seed: int = 0,
  kind: str | None = None,
  steps: int = 50,
  guidance: float | None = None,
  allow_extrapolation: bool = False,
  noise_rows=None,
  labels=None,
  texts=None,
  batch_size: int = 256,
  progress=None,
):
  """One sampling request, as `python -m boot_jax.sample` makes it.

  Args:
    model, params: a loaded work directory (`inference.load`).
    consume: `(start, eps, samples, pixels) -> None` for each batch.
    num: how many samples.
    seed: the noise seed (`noise` rows); ignored with `noise_rows`.
    kind: 'student', 'teacher' or 'hybrid' (None: the student when the run
      has one, else the teacher).
    steps: the teacher's DDIM steps (teacher, hybrid).
    guidance, allow_extrapolation: see `resolve_guidance`.
    noise_rows: `(start, n) -> eps rows` instead of the seed's noise.
    labels, texts: class labels or prompts, cycled (`Conditions`).
    batch_size: examples per call.
    progress: `(done, num) -> None`, about every 10 s.

  Returns:
    `(kind, images/s)`.
  """
  kind = kind or ("student" if model.student else "teacher")
  w = resolve_guidance(model, guidance, kind, allow_extrapolation)
  shape = tuple(model.teacher.sample_shape)
  conds = Conditions(model, labels, texts)
  batch = batch_for(model, num, batch_size)
  fn = jit_on_mesh(model, make_sampler(model, params, kind, steps, w))
  if noise_rows is None:
    noise_rows = lambda s, n: inference.noise(shape, n, seed, s)  # noqa: E731
  rate = stream(
    fn,
    noise_rows,
    conds.rows,
    num,
    batch,
    consume,
    lambda smp: model.teacher.pixels(smp, batch),
    progress=progress,
  )
  return kind, rate
