r"""Distil a teacher into a one-step student with BOOT.

    python -m boot_jax.train --config configs/gmm.py --workdir /tmp/gmm \
      [--config.train.steps=2000 ...]

Writes to the work directory: `config.json` (the resolved config),
`metrics.jsonl` (one JSON object per logged step) and, for the analytic
teacher, `eval.json` (the student's one step against the teacher's DDIM-N
and against exact mixture samples).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

from boot_jax import cli, evaluate, loop, metrics
from boot_jax import student as student_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file (configs/*.py[:arg]).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory.")


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs BOOT from `config`, writing the work-directory files.

  Phases: resolve the config and build everything (teacher, student,
  optimizer, jitted step) -> record the resolved config -> loop -> evaluate.

  Returns:
    The evaluation report (empty when the teacher has no analytic check).
  """
  os.makedirs(workdir, exist_ok=True)
  setup = loop.setup(config)  # resolves teacher fields into the config
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  writer = metrics.MetricWriter(workdir)
  total = config.train.steps
  logging.info(
    "teacher %s, student %d params, grid N=%d",
    setup.teacher.name,
    student_lib.num_params(setup.init_params),
    setup.grid.num_steps,
  )

  def on_log(step, row):
    writer.write(step, row)
    print(
      metrics.progress_line(step, total, row["steps_per_s"], row), flush=True
    )

  t0 = time.perf_counter()
  state, _ = loop.run(setup, on_log=on_log)
  train_s = time.perf_counter() - t0
  report = {}
  if setup.teacher.name == "gmm":
    params = state.ema_params if state.ema_params is not None else state.params
    report = evaluate.gmm_report(
      setup.teacher,
      setup.student,
      params,
      setup.grid,
      config.boot.guidance,
      num=config.eval.num_samples,
      seed=config.eval.seed,
      batch_size=config.eval.batch_size,
    )
    report["train_seconds"] = train_s
    with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2, sort_keys=True)
    print(json.dumps(report, sort_keys=True), flush=True)
  return report


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = cli.config_value(_CONFIG)
  if not _WORKDIR.value:
    cli.fail("--workdir is required")
  try:
    train_and_evaluate(config, _WORKDIR.value)
  except (ValueError, OSError, FloatingPointError) as e:
    cli.fail(e, code=1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
