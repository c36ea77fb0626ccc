r"""Sample from a trained work directory: student, teacher or hybrid.

    python -m boot_jax.sample --workdir W --out samples.npz \
      [--num 64] [--seed 0] [--sampler student|teacher|hybrid] [--steps K] \
      [--noise eps.npy] [--label 3 ...] [--guidance 2.0] [--batch_size 256] \
      [--prompt "a red square" ...] [--prompts_file prompts.txt] \
      [--mesh data=D,fsdp=F,tensor=T] [--dtype float32|bfloat16]

* student: one network call, `x = g(eps, clean)`.
* teacher: the teacher's DDIM with K steps, spaced as the teacher's own
  pipelines space them ('trailing' for our teachers; a Stable Diffusion
  folder's scheduler config otherwise).
* hybrid: the teacher finishes the last K steps of the student's training
  grid: the student jumps to the first point of that K-step grid (the K-th
  lowest grid time) and the teacher runs K DDIM steps from there. K = 0
  would be the student alone, K = N the teacher's DDIM-N from the student's
  x_T: a quality dial.

Any work directory samples on this machine's devices, whatever mesh
trained it: by default every local device holds the parameters and takes
a share of each batch (`--mesh` chooses another layout). The networks run
in float32 unless `--dtype bfloat16` (a bf16-trained run's teacher is only
a reference in float32). A teacher work directory (from
`boot_jax.train_teacher`) samples with the teacher's DDIM.

Writes `images` (float32 NHWC, clipped to [-1, 1]: a network's raw output
can overshoot the data range slightly; or `[N, D]` vectors, unchanged) and
`noise` (the eps used) to the .npz, and a PNG grid of the first 256 beside
it. Latent (Stable Diffusion) samples are decoded by the VAE and kept as
`latents` too. The output is written batch by batch (memory bounded by
`--batch_size`, not `--num`). Prompts come from --prompt (repeatable,
cycled), --prompts_file, or else the training prompts in order. The same
seed gives the same eps for every sampler and any `--num` (eps of example
i depends only on the seed and i). Prints the images/s measured after
compilation.
"""

from __future__ import annotations

from absl import flags

from boot_jax.data import prompts
from boot_jax.runtime import cli
from boot_jax.sampling import inference, samplers
from boot_jax.sampling import sample_io as io


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  out = dict(
    workdir=flags.DEFINE_string("workdir", None, "A work directory."),
    out=flags.DEFINE_string("out", None, "Output .npz path."),
    num=flags.DEFINE_integer("num", None, "Number of samples (default 64)."),
    seed=flags.DEFINE_integer("seed", 0, "Noise seed, 0 <= seed < 2^63."),
    sampler=flags.DEFINE_enum(
      "sampler",
      None,
      samplers.SAMPLERS,
      "Sampler (default: student; teacher for a teacher work directory).",
    ),
    steps=flags.DEFINE_integer("steps", 50, "Teacher DDIM steps."),
    noise=flags.DEFINE_string("noise", None, "A .npy of eps [N, *shape]."),
    label=flags.DEFINE_multi_integer("label", None, "Class label(s), cycled."),
    guidance=flags.DEFINE_float(
      "guidance",
      None,
      "Guidance w for the teacher, and for a guidance-conditioned student "
      "(default: the training config's w, or the middle of its range).",
    ),
    allow_extrapolation=flags.DEFINE_bool(
      "allow_extrapolation",
      False,
      "Allow --guidance outside a guidance-conditioned student's range.",
    ),
    batch_size=flags.DEFINE_integer("batch_size", 256, "Samples per call."),
    prompt=flags.DEFINE_multi_string(
      "prompt", None, "Prompt(s) for a text-to-image teacher, cycled."
    ),
    prompts_file=flags.DEFINE_string(
      "prompts_file", None, "A prompt file (.txt, .jsonl, .csv, .parquet)."
    ),
    **cli.define_inference_flags(inference.DTYPES),
  )
  # The spelling of earlier releases keeps working.
  flags.DEFINE_alias("prompts-file", "prompts_file")
  return out


def main(argv, f):
  cli.check_args(argv, f, "workdir", "out")
  with cli.one_line_errors():
    io.check_request(f)
    mesh = inference.mesh_from_spec(f["mesh"].value)
    model, params, step = inference.load(
      f["workdir"].value, mesh, f["dtype"].value
    )
    shape = tuple(model.teacher.sample_shape)
    noise = io.read_noise(f["noise"].value, shape)
    num = len(noise) if noise is not None else (f["num"].value or 64)
    texts = f["prompt"].value
    if f["prompts_file"].value:
      texts = prompts.read_prompts(f["prompts_file"].value)
    steps = f["steps"].value
    writer = io.SampleWriter(
      f["out"].value, num, shape, model.teacher.pixel_shape
    )
    with writer:
      kind, rate = samplers.run(
        model,
        params,
        writer.write,
        num=num,
        seed=f["seed"].value,
        kind=f["sampler"].value,
        steps=steps,
        guidance=f["guidance"].value,
        allow_extrapolation=f["allow_extrapolation"].value,
        noise_rows=None if noise is None else noise.rows,
        labels=f["label"].value,
        texts=texts,
        batch_size=f["batch_size"].value,
        progress=lambda done, total: cli.printer(
          f"sample: {done:,}/{total:,} ({100 * done / total:.0f}%)"
        ),
      )
    what = kind if kind == "student" else f"{kind} ({steps} steps)"
    cli.printer(f"{writer.summary()}; checkpoint step {step}")
    cli.printer(f"{what}: {rate:.1f} images/s (after compilation)")


if __name__ == "__main__":
  cli.run(define_flags, main)
