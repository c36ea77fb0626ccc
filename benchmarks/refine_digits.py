r"""BOOT alone, refinement alone and BOOT then refinement, at equal wall time.

    python benchmarks/refine_digits.py --teacher W/teacher [--config \
      configs/digits.py] [--boot-steps 4000] [--refine-steps 600] [--write]

On one trained digits teacher (e.g. the demo's W/teacher): (1) BOOT for
`--boot-steps` (the demo's), (2) the refinement phase for
`--refine-steps` from that student (`refine.init_from`); then, at the
wall time of (1) + (2) on the same machine, (3) BOOT alone for
proportionally more steps and (4) the refinement alone from the teacher's
weights (`train.steps=0`). Each run is timed without its evaluation, then
evaluated by `python -m boot_jax.evaluate` (FID-digits of 2,000 samples,
the teacher's DDIM on the same noise). `--write` puts the table into
docs/BENCHMARKS.md. `--config configs/digits_cond.py` runs the
class-conditional teacher (w = 2) and adds class accuracy;
`--refine-guidance 1.5 1` adds (2) with those teacher w inside the
refinement (refine.guidance).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

from boot_jax.runtime import guards

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def train(workdir, config, teacher, *overrides) -> float:
  """Trains (no final evaluation); returns the wall seconds."""
  if os.path.exists(workdir):
    guards.check_workdir(workdir)  # only a work directory is removed
    shutil.rmtree(workdir)
  cmd = [
    sys.executable, "-m", "boot_jax.train", "--config", config,
    "--workdir", workdir, f"--config.teacher.path={teacher}",
    "--config.eval.final=false", "--config.train.eval_every=0",
    *overrides,
  ]  # fmt: skip
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=ROOT)
  return time.perf_counter() - t0


def evaluate(workdir) -> dict:
  subprocess.run(
    [sys.executable, "-m", "boot_jax.evaluate", "--workdir", workdir],
    check=True,
    cwd=ROOT,
  )
  with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as f:
    return json.load(f)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--teacher", required=True, help="a digits teacher workdir")
  p.add_argument("--config", default="configs/digits.py")
  p.add_argument("--boot-steps", type=int, default=4000)
  p.add_argument("--refine-steps", type=int, default=600)
  p.add_argument("--base", default="/tmp/boot_jax_refine_digits")
  p.add_argument("--write", action="store_true")
  p.add_argument(
    "--quick", action="store_true", help="only (1) and (2): no equal-time runs"
  )
  p.add_argument(
    "--refine-guidance",
    type=float,
    nargs="*",
    default=(),
    help="more (2)s, each with this teacher w inside the refinement "
    "(refine.guidance; class-conditional configs)",
  )
  args = p.parse_args()
  base, cfg, teacher = args.base, args.config, os.path.abspath(args.teacher)
  runs = {}
  boot_dir = os.path.join(base, "boot")
  t_boot = train(
    boot_dir, cfg, teacher, f"--config.train.steps={args.boot_steps}"
  )
  t_ref = train(
    os.path.join(base, "boot_refine"), cfg, teacher,
    "--config.train.steps=0", "--config.boot.refine=true",
    f"--config.refine.steps={args.refine_steps}",
    f"--config.refine.init_from={boot_dir}",
  )  # fmt: skip
  total = t_boot + t_ref
  runs["BOOT alone"] = (boot_dir, args.boot_steps, 0, t_boot)
  runs["BOOT, then refinement"] = (
    os.path.join(base, "boot_refine"), args.boot_steps, args.refine_steps,
    total,
  )  # fmt: skip
  for w in args.refine_guidance:
    d = os.path.join(base, f"boot_refine_w{w:g}")
    seconds = train(
      d, cfg, teacher,
      "--config.train.steps=0", "--config.boot.refine=true",
      f"--config.refine.steps={args.refine_steps}",
      f"--config.refine.init_from={boot_dir}",
      f"--config.refine.guidance={w}",
    )  # fmt: skip
    runs[f"BOOT, then refinement with refine.guidance={w:g}"] = (
      d, args.boot_steps, args.refine_steps, t_boot + seconds
    )  # fmt: skip
  more = round(args.boot_steps * total / t_boot)
  if args.quick:
    more = None
  if more is not None:
    d = os.path.join(base, "boot_long")
    runs["BOOT alone, same wall time"] = (
      d, more, 0, train(d, cfg, teacher, f"--config.train.steps={more}")
    )  # fmt: skip
    only = round(args.refine_steps * total / t_ref)
    d = os.path.join(base, "refine_only")
    runs["refinement alone (from the teacher's weights), same wall time"] = (
      d, 0, only,
      train(d, cfg, teacher, "--config.train.steps=0",
            "--config.boot.refine=true", f"--config.refine.steps={only}"),
    )  # fmt: skip
  rows, teacher_rows = [], None
  for name, (workdir, b, r, seconds) in runs.items():
    report = evaluate(workdir)
    s = report["samplers"]
    e = s["student 1 step"]
    rows.append((name, b, r, seconds, e["fid"], e.get("class_accuracy")))
    teacher_rows = {k: v for k, v in s.items() if k.startswith("teacher DDIM")}
    floor = report["fid_real_holdout_vs_train"]
    print(rows[-1], flush=True)
  cond = rows[0][5] is not None
  variants = ""
  if args.refine_guidance:
    ws = " ".join(f"{w:g}" for w in args.refine_guidance)
    variants = f"--refine-guidance {ws} "
  lines = [
    f"<!-- refine-digits{'-cond' if cond else ''}: begin -->",
    f"## BOOT and the refinement at equal wall time ({cfg})",
    "",
    f"Command: `python benchmarks/refine_digits.py --teacher T --config {cfg}"
    f" --boot-steps {args.boot_steps} --refine-steps {args.refine_steps} "
    f"{'--quick ' if args.quick else ''}{variants}"
    + "--write` on a trained teacher; "
    f"machine: {platform.platform()}, "
    f"{os.cpu_count()} CPU cores; date {datetime.date.today().isoformat()}. "
    "Wall time: training only (the runs' own evaluation is off), "
    "compilation included.",
    "",
    "FID-digits of 2,000 one-step samples (`python -m boot_jax.evaluate`; "
    f"the metric's floor, real held-out vs real train: {floor:.2f}). The "
    "teacher on the same noise: "
    + ", ".join(
      f"DDIM {k.split()[-1]} {v['fid']:.2f}"
      for k, v in sorted(
        teacher_rows.items(), key=lambda kv: int(kv[0].split()[-1])
      )
    )
    + ".",
    "",
    "| run | BOOT steps | refinement steps | wall s | student FID-digits |"
    + (" class accuracy |" if cond else ""),
    "|---|---|---|---|---|" + ("---|" if cond else ""),
  ]
  for name, b, r, seconds, fid, acc in rows:
    lines.append(
      f"| {name} | {b} | {r} | {seconds:.0f} | {fid:.2f} |"
      + (f" {acc:.4f} |" if cond else "")
    )
  if cond:
    lines += [
      "",
      "Without refine.guidance the refinement guides with BOOT's w; "
      "the fake network is guided with the same w as the teacher "
      "(refine.guide_fake, on by default).",
    ]
  lines += ["", f"<!-- refine-digits{'-cond' if cond else ''}: end -->"]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.write:
    import demo  # noqa: PLC0415

    begin, end = lines[0], lines[-1]
    demo.write_section(ROOT / "docs" / "BENCHMARKS.md", text, begin, end)


if __name__ == "__main__":
  main()
