r"""Ablations of the BOOT objective on the analytic mixtures.

    python benchmarks/ablations.py [--steps 8000] [--out docs/ablations.md]

For the 2-D circle and the 16-D random mixture (configs/gmm.py), trains the
full objective and one change at a time, all at equal training steps, and
measures the student's one step against the teacher's DDIM-N on 4,000
fresh eps (N = that run's grid) and against exact mixture samples. Writes a
markdown table with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import sys
import time

import jax

from boot_jax.evaluation import mixture_eval
from boot_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]

VARIANTS = [
  ("full objective (N=32)", {}),
  ("(b) no boundary loss", {"boot.boundary_weight": 0.0}),
  ("(c) predict x_t, not the signal", {"student.space": "x"}),
  ("(d) no 1/delta^2 weight", {"boot.weighting": "none"}),
  ("(e) grid uniform in lambda", {"boot.spacing": "lambda"}),
  ("(f) N=16", {"boot.num_steps": 16}),
  ("(f) N=64", {"boot.num_steps": 64}),
  (
    "(f) N=64, coarse-to-fine curriculum 16/32/64",
    {"boot.num_steps": 64, "boot.curriculum_stages": 3},
  ),
  ("boundary target = DDIM start signal", {"boot.boundary_target": "ddim"}),
]
PRESETS = [("2-D circle", "circle"), ("16-D random", "random16")]
# Text below this line in the output file is kept when the table is redone.
NOTES_MARKER = "<!-- notes: kept when the table is regenerated -->"


def get_config(preset: str):
  spec = importlib.util.spec_from_file_location("gmm", ROOT / "configs/gmm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def set_path(config, dotted: str, value):
  *parents, last = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[last] = value


def run_one(preset: str, overrides: dict, steps: int | None) -> dict:
  config = get_config(preset)
  for k, v in overrides.items():
    set_path(config, k, v)
  if steps is not None:
    config.train.steps = steps
  t0 = time.perf_counter()
  setup = trainer.setup(config)
  state, _ = trainer.run(setup)
  jax.block_until_ready(state.params)
  seconds = time.perf_counter() - t0
  report = mixture_eval.gmm_report(
    setup.teacher, setup.student, state.params, setup.grid, config.boot.guidance
  )
  report["seconds"] = seconds
  report["steps"] = config.train.steps
  return report


def table(results: list[tuple[str, str, dict]]) -> str:
  lines = [
    "| mixture | variant | N | agreement | MSE / var | weight err | "
    "MMD student | MMD teacher DDIM-N | ratio | wall s |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for mixture, name, r in results:
    lines.append(
      f"| {mixture} | {name} | {r['num_grid_steps']} | "
      f"{100 * r['agreement']:.2f}% | {r['mse_over_var']:.4f} | "
      f"{r['weight_error']:.3f} | {r['mmd_student']:.4f} | "
      f"{r['mmd_teacher']:.4f} | {r['mmd_ratio']:.2f} | {r['seconds']:.0f} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=None, help="override")
  parser.add_argument("--out", default=str(ROOT / "docs/ablations.md"))
  parser.add_argument("--json", default=None, help="also dump raw results")
  parser.add_argument(
    "--only", default=None, help="comma-separated variant indices"
  )
  args = parser.parse_args()
  chosen = range(len(VARIANTS))
  if args.only:
    chosen = [int(i) for i in args.only.split(",")]
  results = []
  for mixture, preset in PRESETS:
    for i in chosen:
      name, overrides = VARIANTS[i]
      r = run_one(preset, overrides, args.steps)
      print(f"{mixture} | {name}: {json.dumps(r)}", flush=True)
      results.append((mixture, name, r))
  command = "python " + " ".join(
    [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]
  )
  header = (
    f"Command: `{command}`\n\n"
    f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
    f"jax {jax.__version__} on {jax.devices()[0].platform}\n\n"
    f"Date: {datetime.date.today().isoformat()}\n"
  )
  notes = ""
  if os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      old = f.read()
    if NOTES_MARKER in old:
      notes = old[old.index(NOTES_MARKER) :]
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(render(header, table(results)) + ("\n" + notes if notes else ""))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump([list(r) for r in results], f, indent=1)
  print(f"wrote {args.out}")


def render(header: str, body: str) -> str:
  return f"""# BOOT ablations on the analytic mixtures

{header}
Each row trains the student from configs/gmm.py with one change, at equal
training steps (the preset's 8,000 unless the command says otherwise), and
measures its one step on 4,000 fresh eps against the teacher's DDIM-N from
the same eps (N = that row's grid): *agreement* is the fraction of eps whose
two outputs fall in the same mixture component, *MSE / var* their mean
squared difference over the data's per-coordinate variance, *weight err*
the largest gap between the student's component frequencies and the
mixture weights. *MMD* is the biased kernel MMD (sum of Gaussian kernels at
0.01, 0.1 and 1 times the median squared distance) to 4,000 exact mixture
samples, for the student and for the teacher's DDIM-N; *ratio* is
student / teacher. *wall s* is training time while other jobs shared the
two cores: it is not a speed measurement.

{body}
"""


if __name__ == "__main__":
  main()
