r"""Export a trained student for serving, with no boot_jax needed to run it.

    python -m boot_jax.export --workdir W --out DIR [--batch B] \
      [--platforms cpu,cuda,tpu] [--dtype float32|bfloat16] [--overwrite]

Writes into DIR:

* `sampler.jax`: a serialized `jax.export` artifact of the one-step sampler
  `(params, eps[, cond][, w]) -> images` with a symbolic batch dimension
  (any batch size; `--batch B` fixes it instead), lowered for each of
  `--platforms`. Images are what `sample` writes: NHWC in [-1, 1] (VAE
  decoded for latent teachers) or vectors.
* `params.npz`: the student's parameters (EMA when kept) as the flat list
  the artifact takes first, `p00000`, `p00001`, ...
* `signature.json`: the inputs' shapes and dtypes and the checkpoint step.
* `README.md`: the few lines of plain jax/numpy that run it.
* family extras: for a Stable Diffusion student also a diffusers folder
  (`diffusers/`, see `boot_jax.teachers.sd_export`).

DIR is written in a temporary directory beside it and renamed into place:
a failed export leaves nothing. An existing DIR is replaced only when it
is an earlier export (its `signature.json`, nothing else in it) and with
`--overwrite`; never the work directory, a folder above or inside it, the
current or a home directory (`boot_jax.guards`).
"""

from __future__ import annotations

from absl import flags

from boot_jax.runtime import cli
from boot_jax.sampling import export as export_lib
from boot_jax.sampling import inference


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  return dict(
    workdir=flags.DEFINE_string("workdir", None, "A BOOT work directory."),
    out=flags.DEFINE_string("out", None, "Output directory."),
    batch=flags.DEFINE_integer(
      "batch", None, "Fix the batch size (default: symbolic, any size)."
    ),
    platforms=flags.DEFINE_list(
      "platforms",
      None,
      "Platforms to lower for (default: cpu,cuda,tpu).",
    ),
    **cli.define_inference_flags(inference.DTYPES, mesh=False),
    overwrite=flags.DEFINE_bool(
      "overwrite",
      False,
      "Replace an earlier export folder at --out.",
    ),
  )


def main(argv, f):
  cli.check_args(argv, f, "workdir", "out")
  with cli.one_line_errors():
    files = export_lib.export(
      f["workdir"].value,
      f["out"].value,
      f["batch"].value,
      f["platforms"].value,
      f["dtype"].value,
      f["overwrite"].value,
      printer=cli.printer,
    )
    cli.printer(f"exported to {f['out'].value}: {', '.join(files)}")


if __name__ == "__main__":
  cli.run(define_flags, main)
