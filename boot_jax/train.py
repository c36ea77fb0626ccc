r"""Distil a teacher into a one-step student with BOOT.

    python -m boot_jax.train --config configs/digits.py --workdir /tmp/boot
    python -m boot_jax.train --config configs/gmm.py --workdir /tmp/gmm \
      [--config.train.steps=2000 ...]

Writes the work-directory contract (README.md): config.json (the resolved
config), checkpoints/ (orbax; every train.ckpt_every steps, at the end and
on SIGTERM), metrics.jsonl, tb/ (TensorBoard), samples/ (a PNG grid of the
student's one-step samples on fixed noise at every evaluation, and the
teacher's DDIM on the same noise once: teacher.png) and, when
`eval.final` is set, eval.json. Rerunning the same command continues from
the latest checkpoint.

If `teacher.path` names a directory without a finished teacher and the
config has a `teacher.recipe`, that teacher is trained there first.
"""

from __future__ import annotations

import jax
from absl import flags
from ml_collections import config_flags

from boot_jax.runtime import cli, sharding
from boot_jax.training import boot_run


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  return dict(
    config=config_flags.DEFINE_config_file(
      "config", None, "Config file (configs/*.py[:arg]).", lock_config=True
    ),
    workdir=flags.DEFINE_string("workdir", None, "Work directory."),
    distributed=flags.DEFINE_bool(
      "distributed",
      False,
      "Start JAX's multi-process runtime, finding the coordinator from the "
      "environment (Cloud TPU VMs, SLURM, Open MPI, GKE).",
    ),
    coordinator=flags.DEFINE_string(
      "coordinator",
      None,
      "host:port of process 0's coordinator (implies --distributed; needs "
      "--num_processes and --process_id).",
    ),
    num_processes=flags.DEFINE_integer(
      "num_processes", None, "Processes in the run (with --coordinator)."
    ),
    process_id=flags.DEFINE_integer(
      "process_id", None, "This process's index (with --coordinator)."
    ),
  )


def start_runtime(f) -> None:
  """Joins the multi-process runtime when the flags ask for it."""
  if not (f["distributed"].value or f["coordinator"].value):
    return
  try:
    sharding.initialize_distributed(
      f["coordinator"].value,
      f["num_processes"].value,
      f["process_id"].value,
    )
  except (ValueError, RuntimeError) as e:
    cli.fail(f"cannot start the multi-process runtime: {e}", code=1)


def main(argv, f):
  config = cli.config_value(f["config"])
  cli.check_args(argv, f, "workdir")
  start_runtime(f)
  try:
    with cli.one_line_errors():
      boot_run.train_and_evaluate(
        config, f["workdir"].value, printer=cli.printer
      )
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    # A collective or the coordination service failed: most often another
    # process of the run died.
    cli.fail(
      "the multi-process run failed (did another process stop?): "
      f"{' '.join(str(e).split())[:300]}",
      code=1,
    )


if __name__ == "__main__":
  cli.run(define_flags, main)
