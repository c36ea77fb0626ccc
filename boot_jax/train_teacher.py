r"""Plain denoising training of a pixel teacher (the demo's, or your own).

    python -m boot_jax.train_teacher --config configs/digits_teacher.py \
      --workdir /tmp/digits_teacher

The data come from the config's `data` section (scikit-learn's digits, a
folder of PNG/JPEG images, or MNIST-style IDX files). The loss is the mean
squared error of the network's native output (eps, v or x0) at a uniformly
drawn timestep; an EMA of the weights is kept and is what students read
(checkpoint item `params`). Writes the work-directory contract: config.json,
checkpoints/, metrics.jsonl, tb/ and samples/ (DDIM grids of the EMA).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from boot_jax.runtime import cli
from boot_jax.training import teacher_run


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  return dict(
    config=config_flags.DEFINE_config_file(
      "config", None, "Teacher config (configs/*_teacher.py).", lock_config=True
    ),
    workdir=flags.DEFINE_string("workdir", None, "Teacher work directory."),
  )


def main(argv, f):
  config = cli.config_value(f["config"])
  cli.check_args(argv, f, "workdir")
  with cli.one_line_errors():
    teacher_run.train_and_evaluate(
      config, f["workdir"].value, printer=cli.printer
    )


if __name__ == "__main__":
  cli.run(define_flags, main)
