r"""Evaluation: the student against the teacher's DDIM and the data.

    python -m boot_jax.evaluate --workdir W [--mesh data=D,...] \
      [--dtype float32|bfloat16]

writes W/eval.json and prints a table. Runs on this machine's devices,
whatever mesh trained the run (see `boot_jax.inference`); the networks run
in float32 unless `--dtype bfloat16`. On a teacher work directory only the
teacher's samplers are evaluated.

* Analytic mixture: the student's one step `g(eps, clean)` against the
  teacher's DDIM over the training grid from the same eps (component
  agreement, MSE) and against exact mixture samples (kernel MMD).
* Pixel teachers: agreement of the student with the teacher's DDIM 10, 25
  and 50 steps on the same eps (MSE, PSNR); Frechet distances in the
  feature space of a small classifier trained on the same data (its
  held-out accuracy reported) from the real data to the student's one step,
  the teacher's DDIM 1, 2, 4, 10, 50 steps and the hybrid sampler; and
  the images/s of each (same batch, after compilation). With
  `--inception F --reference R` (or the run's `eval.inception` and
  `eval.reference` in its final evaluation) each sampler also gets the
  Inception FID, KID and precision/recall of `--protocol pixel`.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags

from boot_jax.config import defaults
from boot_jax.evaluation import (
  clip_score,
  evaluator,
  pixel_eval,
  text_eval,
)
from boot_jax.runtime import cli, paths
from boot_jax.runtime import workdir as workdir_lib
from boot_jax.sampling import inference


def protocol_flags() -> dict:
  """The flags of `evaluate --protocol text` and `--protocol pixel`."""
  return dict(
    protocol=flags.DEFINE_enum(
      "protocol",
      "default",
      ["default", "text", "pixel"],
      "default: the report of the run's kind (digits, mixture, agreement); "
      "text: the CLIP score over --captions, and Inception metrics with "
      "--reference (writes W/eval_text.json); "
      "pixel: Inception FID, KID and precision/recall against --reference "
      "(writes W/eval_pixel.json).",
    ),
    captions=flags.DEFINE_string(
      "captions", None, "Caption file of --protocol text (txt/jsonl/csv)."
    ),
    clip=flags.DEFINE_string(
      "clip", None, "A local CLIP folder (transformers) for --protocol text."
    ),
    num_captions=flags.DEFINE_integer(
      "num_captions",
      text_eval.DEFAULT_CAPTIONS,
      "Captions scored (the first ones).",
    ),
    reference=flags.DEFINE_string(
      "reference",
      None,
      "Reference statistics (fid_stats --out): needed by --protocol pixel, "
      "optional for text (adds FID, KID, precision/recall).",
    ),
    inception=flags.DEFINE_string(
      "inception", None, "FID Inception weights (.safetensors)."
    ),
    seed=flags.DEFINE_integer("seed", 0, "Noise seed (as sample --seed)."),
    guidance=flags.DEFINE_float(
      "guidance", None, "Guidance w (default: the run's trained w)."
    ),
  )


NEEDS = {"text": ("captions", "clip"), "pixel": ("reference", "inception")}


def check_flags(f) -> None:
  """Refuses a protocol without its inputs, before loading anything."""
  protocol = f["protocol"].value
  needs = list(NEEDS.get(protocol, ()))
  if f["reference"].value or f["inception"].value:
    needs += ["reference", "inception"]  # Inception metrics: both or neither
  for name in needs:
    if not f[name].value:
      raise text_eval.TextEvalError(f"--protocol {protocol} needs --{name}")
  if f["num_captions"].value < 1:
    raise text_eval.TextEvalError(
      f"--num_captions must be >= 1, got {f['num_captions'].value}"
    )
  if protocol == "text":
    # Bad captions or a local folder that is not CLIP's: refused before the
    # run and its teacher load (seconds to minutes).
    text_eval.captions_of(f["captions"].value, f["num_captions"].value)
    if not paths.is_remote(f["clip"].value):
      clip_score.require_clip_folder(f["clip"].value)


def default_scorer(f):
  """Inception metrics for each sampler of `--protocol default`, or None
  without `--inception`/`--reference`."""
  if not f["reference"].value:
    return None

  return pixel_eval.scorer(f["inception"].value, f["reference"].value)


def protocol_report(f, model, params, printer=print) -> dict:
  """The report of `--protocol text` or `pixel` (see their modules)."""
  if f["protocol"].value == "text":
    return text_eval.clip_report(
      model,
      params,
      f["captions"].value,
      f["clip"].value,
      f["num_captions"].value,
      f["seed"].value,
      f["guidance"].value,
      printer=printer,
      reference=f["reference"].value,
      inception=f["inception"].value,
    )

  num = f["num_samples"].value or pixel_eval.DEFAULT_SAMPLES
  return pixel_eval.pixel_report(
    model,
    params,
    f["reference"].value,
    f["inception"].value,
    num,
    f["seed"].value,
    f["guidance"].value,
    printer=printer,
  )


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  return dict(
    workdir=flags.DEFINE_string("workdir", None, "A work directory."),
    **cli.define_inference_flags(inference.DTYPES),
    num_samples=flags.DEFINE_integer(
      "num_samples", None, "Samples per sampler (default: eval.num_samples)."
    ),
    **protocol_flags(),
  )


def main(argv, f):
  cli.check_args(argv, f, "workdir")
  workdir = f["workdir"].value
  with cli.one_line_errors():
    check_flags(f)
    protocol = f["protocol"].value
    name = "eval.json" if protocol == "default" else f"eval_{protocol}.json"
    path = paths.join(workdir, name)
    # Refuse up front what could not be written at the end.
    if not paths.is_remote(workdir):
      if os.path.isdir(workdir) and not os.access(workdir, os.W_OK):
        raise OSError(f"cannot write {path}: {workdir} is read-only")
    else:
      paths.check_writable(workdir)
    mesh = inference.mesh_from_spec(f["mesh"].value)
    model, params, step = inference.load(workdir, mesh, f["dtype"].value)
    cli.printer(f"evaluate: loaded {workdir} (checkpoint step {step})")
    if f["num_samples"].value is not None:
      if f["num_samples"].value < 1:
        raise ValueError(
          f"--num_samples must be >= 1, got {f['num_samples'].value}"
        )
      section = defaults.thaw(model.config.eval)
      section.num_samples = f["num_samples"].value
      model = dataclasses.replace(
        model, config=defaults.derive(model.config, eval=section)
      )
    if protocol != "default":
      report = protocol_report(f, model, params, cli.printer)
    else:
      report = evaluator.evaluate(model, params, cli.printer, default_scorer(f))
    report["checkpoint_step"] = step
    workdir_lib.atomic_write(path, json.dumps(report, indent=2, sort_keys=True))
    cli.printer(evaluator.format_report(report))
    cli.printer(f"wrote {path}")


if __name__ == "__main__":
  cli.run(define_flags, main)
