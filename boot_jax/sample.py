r"""Sample from a trained work directory: student, teacher or hybrid.

    python -m boot_jax.sample --workdir W --out samples.npz \
      [--num 64] [--seed 0] [--sampler student|teacher|hybrid] [--steps K] \
      [--noise eps.npy] [--label 3 ...] [--guidance 2.0] [--batch_size 256] \
      [--prompt "a red square" ...] [--prompts-file prompts.txt]

* student: one network call, `x = g(eps, clean)`.
* teacher: the teacher's DDIM with K steps (trailing spacing).
* hybrid: the teacher finishes the last K steps of the student's training
  grid: the student jumps to the first point of that K-step grid (the K-th
  lowest grid time) and the teacher runs K DDIM steps from there. K = 0
  would be the student alone, K = N the teacher's DDIM-N from the student's
  x_T: a quality dial.

Writes `images` (float32, NHWC in [-1, 1], or [N, D] vectors) and `noise`
(the eps used) to the npz, and a PNG grid beside it for images. For latent
(Stable Diffusion) teachers the samples are decoded by the VAE (with its
scaling factor) and the latents are saved as `latents` too; prompts come
from --prompt (repeatable, cycled), --prompts-file, or else the training
prompts in order. The same
seed gives the same eps for every sampler (eps of example i depends only on
the seed and i). Prints the images/s measured after compilation.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from boot_jax import checkpoint, cli, conditions, diffusion, loop, prompts
from boot_jax import workdir as workdir_lib

SAMPLERS = ("student", "teacher", "hybrid")


def load_workdir(workdir: str, printer=print):
  """Rebuilds a run from its config.json and restores its latest params.

  Returns:
    `(setup, params, step)`; params are the EMA ones when kept.
  """
  config = workdir_lib.load_config(workdir)
  setup = loop.setup(config)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  state = checkpoint.read_item(ckpt_dir, "state", setup.abstract_state())
  return setup, loop.params_for_sampling(state), int(state.step)


def noise(shape, num: int, seed: int) -> jax.Array:
  """The eps of examples 0..num-1 for `seed` (independent of the sampler)."""
  return conditions.draw_noise(jax.random.key(seed), 0, jnp.arange(num), shape)


def hybrid_timesteps(setup: loop.Setup, steps: int) -> np.ndarray:
  """The last `steps` model-call times of the training grid, descending.

  The first is where the student jumps to; the teacher's DDIM runs from
  there through the rest to the clean end.
  """
  n = setup.grid.num_steps
  if not 1 <= steps <= n:
    raise ValueError(
      f"hybrid needs 1 <= --steps <= {n} (the student's grid), got {steps}"
    )
  return setup.grid.times[1 : steps + 1][::-1].astype(np.float64)


def resolve_guidance(setup: loop.Setup, guidance=None):
  """The w to sample with: the given one, else the training config's.

  A guidance-conditioned student has no single w: it needs one given
  (`eval.guidance` or `--guidance`); otherwise the middle of its range is
  used.
  """
  if guidance is not None:
    if guidance < 0:
      raise ValueError(f"guidance must be >= 0, got {guidance}")
    return float(guidance)
  if setup.student.guided:
    lo, hi = (float(w) for w in setup.config.boot.guidance_range)
    return (lo + hi) / 2
  return setup.config.boot.get("guidance")


def make_sampler(setup: loop.Setup, params, kind: str, steps: int, guidance):
  """A jitted `(eps, cond) -> samples` for one sampler.

  `guidance` guides the teacher's steps and, for a guidance-conditioned
  student, is the w the student reads.
  """
  student, teacher = setup.student, setup.teacher
  w_student = guidance if student.guided else None
  if kind == "student":
    return jax.jit(lambda e, c: student.generate(params, e, c, w_student))
  if steps < 1:
    raise ValueError(f"--steps must be >= 1 for the {kind} sampler")
  if kind == "teacher":
    # 'trailing' by default; a Stable Diffusion teacher spaces its steps as
    # its scheduler_config.json says (as diffusers' pipelines do).
    spacing, offset = teacher.extras.get("ddim_spacing", ("trailing", 0))
    ts = teacher.schedule.timesteps(steps, spacing, offset)
    return jax.jit(
      lambda e, c: teacher.ddim(teacher.params, e, ts, c, guidance)
    )
  if kind == "hybrid":
    ts = hybrid_timesteps(setup, steps)

    def hybrid(e, c):
      x = student.x_t(params, e, ts[0], c, w_student)
      fn = lambda x, t: teacher.output(teacher.params, x, t, c, guidance)  # noqa: E731
      return diffusion.ddim_sample(
        fn, x, teacher.schedule, ts, teacher.prediction
      )

    return jax.jit(hybrid)
  raise ValueError(f"unknown sampler {kind!r}; expected {SAMPLERS}")


def run_sampler(fn, eps, cond, batch_size: int):
  """Applies `fn` in fixed-size batches; returns (samples, images/s).

  The last batch is padded to the full size so only one shape compiles;
  the first batch is run once before timing so compilation is excluded.
  """
  n = eps.shape[0]
  batch_size = min(batch_size, n)
  pad = (-n) % batch_size
  pad_to = lambda a: jnp.concatenate([a, a[:pad]]) if pad else a  # noqa: E731
  eps_p = pad_to(eps)
  cond_p = None if cond is None else pad_to(cond)
  chunk = lambda a, i: None if a is None else a[i : i + batch_size]  # noqa: E731
  jax.block_until_ready(fn(chunk(eps_p, 0), chunk(cond_p, 0)))
  outs = []
  t0 = time.perf_counter()
  for i in range(0, eps_p.shape[0], batch_size):
    outs.append(fn(chunk(eps_p, i), chunk(cond_p, i)))
  outs = jax.block_until_ready(outs)
  seconds = time.perf_counter() - t0
  samples = np.concatenate([np.asarray(o) for o in outs])[:n]
  return samples, eps_p.shape[0] / seconds


def labels_for(setup: loop.Setup, num: int, labels=None):
  """Class labels for a conditional teacher: given ones cycled, or 0..K-1."""
  spec = setup.teacher.condition
  if spec.kind != "class":
    if labels:
      raise ValueError("--label given but the teacher is not class-conditional")
    return None
  if labels:
    bad = [v for v in labels if not 0 <= v <= spec.num_classes]
    if bad:
      raise ValueError(
        f"--label {bad[0]} is out of range 0..{spec.num_classes} "
        f"({spec.num_classes} is the null label)"
      )
    base = np.asarray(labels, np.int32)
  else:
    base = np.arange(spec.num_classes, dtype=np.int32)
  return jnp.asarray(np.resize(base, num))


def text_conditions(setup: loop.Setup, num: int, texts=None, path=None):
  """Prompt embeddings for a text teacher (None for other teachers)."""
  teacher = setup.teacher
  if teacher.condition.kind != "text":
    if texts or path:
      raise ValueError("--prompt given but the teacher is not text-to-image")
    return None
  if path:
    texts = prompts.read_prompts(path)
  if texts:
    texts = [" ".join(t.split()) for t in texts]
    emb = np.asarray(teacher.extras["encode"](texts))
    return jnp.asarray(np.resize(emb, (num,) + emb.shape[1:]))
  prompt_set = teacher.extras.get("prompts")
  if prompt_set is None:
    raise ValueError("give --prompt or --prompts-file")
  return jnp.asarray(prompt_set.cycled(num))


def to_pixels(setup: loop.Setup, samples, batch_size: int = 16):
  """Decodes latent samples with the teacher's VAE (others unchanged)."""
  parts = setup.teacher.extras.get("sd")
  if parts is None:
    return samples
  from boot_jax.teachers import sd  # noqa: PLC0415

  out = [
    np.asarray(sd.decode(parts, jnp.asarray(samples[i : i + batch_size])))
    for i in range(0, len(samples), batch_size)
  ]
  return np.clip(np.concatenate(out), -1.0, 1.0)


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  return dict(
    workdir=flags.DEFINE_string("workdir", None, "A BOOT work directory."),
    out=flags.DEFINE_string("out", None, "Output .npz path."),
    num=flags.DEFINE_integer("num", 64, "Number of samples."),
    seed=flags.DEFINE_integer("seed", 0, "Noise seed."),
    sampler=flags.DEFINE_enum("sampler", "student", SAMPLERS, "Sampler."),
    steps=flags.DEFINE_integer("steps", 50, "Teacher DDIM steps."),
    noise=flags.DEFINE_string("noise", None, "A .npy of eps [N, *shape]."),
    label=flags.DEFINE_multi_integer("label", None, "Class label(s), cycled."),
    guidance=flags.DEFINE_float(
      "guidance",
      None,
      "Guidance w for the teacher, and for a guidance-conditioned student "
      "(default: the training config's w, or the middle of its range).",
    ),
    batch_size=flags.DEFINE_integer("batch_size", 256, "Samples per call."),
    prompt=flags.DEFINE_multi_string(
      "prompt", None, "Prompt(s) for a text-to-image teacher, cycled."
    ),
    prompts_file=flags.DEFINE_string(
      "prompts-file", None, "A prompt file (.txt, .jsonl, .csv, .parquet)."
    ),
  )


def main(argv, f):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not f["workdir"].value or not f["out"].value:
    cli.fail("--workdir and --out are required")
  num, guidance = f["num"].value, f["guidance"].value
  if num < 1:
    cli.fail(f"--num must be positive, got {num}")
  if guidance is not None and guidance < 0:
    cli.fail(f"--guidance must be >= 0, got {guidance}")
  try:
    setup, params, step = load_workdir(f["workdir"].value)
    shape = tuple(setup.teacher.sample_shape)
    if f["noise"].value:
      eps = np.load(f["noise"].value, allow_pickle=False).astype(np.float32)
      if eps.shape[1:] != shape:
        want = ", ".join(map(str, shape))
        raise ValueError(f"--noise has shape {eps.shape}; expected [N, {want}]")
      eps = jnp.asarray(eps)
    else:
      eps = noise(shape, num, f["seed"].value)
    cond = labels_for(setup, eps.shape[0], f["label"].value)
    text = text_conditions(
      setup, eps.shape[0], f["prompt"].value, f["prompts_file"].value
    )
    cond = text if text is not None else cond
    guidance = resolve_guidance(setup, guidance)
    fn = make_sampler(
      setup, params, f["sampler"].value, f["steps"].value, guidance
    )
    samples, rate = run_sampler(fn, eps, cond, f["batch_size"].value)
    images = to_pixels(setup, samples)
    arrays = dict(images=images.astype(np.float32), noise=np.asarray(eps))
    if images is not samples:
      arrays["latents"] = np.asarray(samples, np.float32)
      shape = images.shape[1:]
    out = f["out"].value
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **arrays)
    msg = f"wrote {len(images)} samples to {out}"
    if len(shape) == 3:
      png = os.path.splitext(out)[0] + ".png"
      workdir_lib.save_image_grid(images[:256], png)
      msg += f" and {png}"
    kind, steps = f["sampler"].value, f["steps"].value
    what = kind if kind == "student" else f"{kind} ({steps} steps)"
    cli.printer(f"{msg}; checkpoint step {step}")
    cli.printer(f"{what}: {rate:.1f} images/s (after compilation)")
  except (ValueError, OSError, checkpoint.CheckpointError) as e:
    cli.fail(e, code=1)


if __name__ == "__main__":
  _flags = define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
