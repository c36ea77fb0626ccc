r"""Runs the README's demo from scratch and writes docs/BENCHMARKS.md.

    python benchmarks/demo.py [--workdir /tmp/boot_demo] [--keep] \
      [--inception inception_fid.safetensors] [--boot | --flow]

Times the demo command (configs/digits.py: BOOT, then the refinement
phase; `--boot`: configs/digits.py:boot, BOOT alone; `--flow`:
configs/digits_flow.py, the demo on a teacher trained by flow matching;
teacher training included) in a fresh work directory, reads its
eval.json, checks the quality and speed bars, copies the student's final
sample grid to docs/ (demo_refine_samples.png, demo_samples.png,
demo_flow_samples.png) and writes the table with the command, the
machine and the date. With
`--inception` (the FID Inception's weights, docs/evaluation.md) it then
re-evaluates the run with Inception metrics against the 1,797 digits
(untimed: not part of the demo) and fills the table's Inception FID
column; without them the column says what it needs.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
import typing

import numpy as np

import boot_jax
from boot_jax.data import datasets
from boot_jax.evaluation import digits_classifier as dc
from boot_jax.runtime import guards

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTION_BEGIN = "<!-- demo: begin -->"
SECTION_END = "<!-- demo: end -->"
# The demo as shipped (configs/digits.py: BOOT, then the refinement phase);
# the section above (SECTION_*) is BOOT alone (`--boot`).
REFINE_BEGIN = "<!-- demo-refine: begin -->"
REFINE_END = "<!-- demo-refine: end -->"


class Variant(typing.NamedTuple):
  """One demo: its config, its section of BENCHMARKS.md, its bars."""

  config: str
  title: str
  begin: str
  end: str
  samples: str  # the student's grid, copied into docs/
  refine: bool  # BOOT, then the refinement phase
  flow: bool = False  # a flow-matching teacher: its DDIM is Euler


VARIANTS = {
  "refine": Variant(
    "configs/digits.py",
    "The demo: BOOT, then the refinement phase, on 8x8 digits "
    "(configs/digits.py)",
    REFINE_BEGIN,
    REFINE_END,
    "demo_refine_samples.png",
    refine=True,
  ),
  "boot": Variant(
    "configs/digits.py:boot",
    "BOOT alone on 8x8 digits (configs/digits.py:boot)",
    SECTION_BEGIN,
    SECTION_END,
    "demo_samples.png",
    refine=False,
  ),
  "flow": Variant(
    "configs/digits_flow.py",
    "The demo on a flow-matching teacher (configs/digits_flow.py)",
    "<!-- demo-flow: begin -->",
    "<!-- demo-flow: end -->",
    "demo_flow_samples.png",
    refine=True,
    flow=True,
  ),
}


def run_demo(
  workdir: str, config: str = "configs/digits.py", *overrides: str
) -> float:
  cmd = [
    sys.executable,
    "-m",
    "boot_jax.train",
    "--config",
    config,
    "--workdir",
    workdir,
    *overrides,
  ]
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=ROOT)
  return time.perf_counter() - t0


def inception_evaluation(workdir: str, weights: str) -> float:
  """Reference statistics of the digits, then `evaluate` with Inception
  metrics for every sampler (rewrites W/eval.json). Returns seconds."""
  ref = os.path.join(workdir, "digits_inception_ref.npz")
  t0 = time.perf_counter()
  for cmd in (
    ["boot_jax.fid_stats", "--digits", "--inception", weights, "--out", ref],
    ["boot_jax.evaluate", "--workdir", workdir, "--inception", weights,
     "--reference", ref],
  ):  # fmt: skip
    subprocess.run([sys.executable, "-m", *cmd], check=True, cwd=ROOT)
  return time.perf_counter() - t0


def flow_bars(
  report: dict, boot_fid: float | None
) -> list[tuple[str, bool, str]]:
  """The flow demo's bars: BOOT's student (the evaluation at the end of
  BOOT, `boot_fid`) within 1.5x the teacher's Euler-50, the refined one
  within 1.1x, one step 30x as fast."""
  s = report["samplers"]
  student, euler50 = s["student 1 step"], s["teacher DDIM 50"]
  ratio = student["fid"] / euler50["fid"]
  speed = student["images_per_s"] / euler50["images_per_s"]
  rows = []
  if boot_fid is not None:
    boot_ratio = boot_fid / euler50["fid"]
    rows.append(
      (
        "BOOT's student FID <= 1.5 x teacher Euler-50 FID",
        boot_ratio <= 1.5,
        f"{boot_fid:.2f} vs {euler50['fid']:.2f} ({boot_ratio:.2f}x)",
      )
    )
  return rows + [
    (
      "refined student FID <= 1.1 x teacher Euler-50 FID",
      ratio <= 1.1,
      f"{student['fid']:.2f} vs {euler50['fid']:.2f} ({ratio:.2f}x)",
    ),
    (
      "one step >= 30 x the images/s of Euler-50",
      speed >= 30,
      f"{speed:.1f}x",
    ),
  ]


def boot_alone_fid(workdir: str, config: str, keep: bool = False) -> float:
  """BOOT alone (`config`:boot) on the teacher the timed run trained, in a
  work directory beside it (untimed; one already finished there is
  reused): its student's FID-digits. Its BOOT phase is the timed run's
  first `train.steps` steps exactly (same seeds, same schedule)."""
  boot_dir = workdir.rstrip("/") + "_boot"
  report = os.path.join(boot_dir, "eval.json")
  if not os.path.isfile(report):
    if os.path.exists(boot_dir):
      guards.check_workdir(boot_dir)  # only a work directory is removed
      shutil.rmtree(boot_dir)
    run_demo(
      boot_dir,
      f"{config}:boot",
      f"--config.teacher.path={os.path.join(workdir, 'teacher')}",
    )
  with open(report, encoding="utf-8") as f:
    fid = json.load(f)["samplers"]["student 1 step"]["fid"]
  if not keep:
    shutil.rmtree(boot_dir)
  return float(fid)


def bars(
  report: dict, refine: bool = False, seconds: float | None = None
) -> list[tuple[str, bool, str]]:
  s = report["samplers"]
  student = s["student 1 step"]
  ddim50, ddim4 = s["teacher DDIM 50"], s["teacher DDIM 4"]
  ratio = student["fid"] / ddim50["fid"]
  speed = student["images_per_s"] / ddim50["images_per_s"]
  extra = []
  if refine:  # the bars the demo as shipped must meet
    ddim25 = s["teacher DDIM 25"]
    extra = [
      (
        "demo wall time <= 10 min on 2 CPU cores",
        seconds is not None and seconds <= 600,
        "not timed" if seconds is None else f"{seconds / 60:.1f} min",
      ),
      (
        "refined student FID <= 1.0 x teacher DDIM-50 FID",
        ratio <= 1.0,
        f"{student['fid']:.2f} vs {ddim50['fid']:.2f} ({ratio:.2f}x)",
      ),
      (
        "refined student FID < teacher DDIM-25 FID",
        student["fid"] < ddim25["fid"],
        f"{student['fid']:.2f} vs {ddim25['fid']:.2f}",
      ),
    ]
  return extra + [
    (
      "student FID <= 1.5 x teacher DDIM-50 FID",
      ratio <= 1.5,
      f"{student['fid']:.2f} vs {ddim50['fid']:.2f} ({ratio:.2f}x)",
    ),
    (
      "student FID < teacher DDIM-4 FID",
      student["fid"] < ddim4["fid"],
      f"{student['fid']:.2f} vs {ddim4['fid']:.2f}",
    ),
    (
      "one step >= 30 x the images/s of DDIM-50",
      speed >= 30,
      f"{speed:.1f}x",
    ),
  ]


def pixel_distances(workdir: str, num: int = 2000, seed: int = 12345):
  """A second measure, built from no network: the Frechet distance between
  the samples and the 1,797 real digits in raw pixel space (64-d), for the
  student's one step and the teacher's DDIM-50 on the same noise."""
  run = boot_jax.load(workdir)

  def fd(images):
    flat = np.clip(np.asarray(images), -1, 1).reshape(len(images), -1)
    return dc.frechet_distance(*real, *dc.gaussian(flat))

  real = dc.gaussian(datasets.load_digits().images.reshape(-1, 64))
  student = fd(run.sample(num, seed=seed))
  teacher = fd(run.teacher_sample(num, seed=seed, steps=50))
  return {"student 1 step": student, "teacher DDIM 50": teacher}


def pixel_rows(pixels: dict | None) -> list[str]:
  if pixels is None:
    return []
  student, teacher = pixels["student 1 step"], pixels["teacher DDIM 50"]
  return [
    "",
    "A second measure, from no network (`pixel_distances`): the Frechet "
    "distance in raw pixel space (64-d) to the 1,797 digits, same "
    f"2,000 noises: student 1 step **{student:.3f}**, teacher DDIM 50 "
    f"**{teacher:.3f}** ({student / teacher:.2f}x).",
  ]


def ordered(names) -> list[str]:
  """Student first, then teacher DDIM and hybrids by their step counts."""

  def key(name):
    digits = "".join(c if c.isdigit() else " " for c in name).split()
    steps = int(digits[-1]) if digits else 0
    kind = 0 if name.startswith("student") else 1 if "DDIM" in name else 2
    return kind, steps

  return sorted(names, key=key)


def markdown(
  report, seconds, command, bar_rows, variant=VARIANTS["boot"], pixels=None
) -> str:
  flow_note = []
  if variant.flow:
    flow_note = [
      "The teacher predicts the velocity `eps - x0` of the rectified flow "
      "`x_t = (1 - t) x0 + t eps`, trained by flow matching "
      "(configs/digits_teacher.py:flow); its DDIM rows are its Euler "
      "sampler (the same step on this path, docs/method.md), at the "
      "times of diffusers' FlowMatchEulerDiscreteScheduler.",
      "",
    ]
  lines = [
    variant.begin,
    f"## {variant.title}",
    "",
    *flow_note,
    f"Command: `{command}` (fresh work directory, teacher training included)",
    "",
    f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores",
    "",
    f"Date: {datetime.date.today().isoformat()}",
    "",
    f"Demo wall time: **{seconds / 60:.1f} min** ({seconds:.0f} s).",
    "",
    f"FID-digits: Frechet distance between {report['num_samples']} samples "
    "and the 1,797 real digits in the 64-d feature space of a small CNN "
    "trained on the digits (held-out accuracy "
    f"{report['classifier_accuracy']:.3f}; the real held-out split against "
    f"the real training split scores {report['fid_real_holdout_vs_train']:.2f}"
    "). Images/s: same batch, after compilation, on the CPU.",
    "",
    *inception_note(report),
    *pixel_rows(pixels),
    "",
    "| sampler | FID-digits | Inception FID | images/s |",
    "|---|---|---|---|",
  ]
  for name in ordered(report["samplers"]):
    e = report["samplers"][name]
    inc = e.get("fid_inception")
    inc = "needs weights" if inc is None else f"{inc:.2f}"
    lines.append(
      f"| {name} | {e['fid']:.2f} | {inc} | {e['images_per_s']:.0f} |"
    )
  lines += [
    "",
    "Agreement of the student's one step with the teacher's DDIM "
    "from the same eps:",
    "",
    "| teacher | MSE | PSNR (dB) |",
    "|---|---|---|",
  ]
  for k, v in report["agreement"].items():
    lines.append(f"| DDIM {k} | {v['mse']:.4f} | {v['psnr']:.2f} |")
  lines += ["", "| bar | met | measured |", "|---|---|---|"]
  for name, ok, measured in bar_rows:
    lines.append(f"| {name} | {'yes' if ok else '**no**'} | {measured} |")
  lines += ["", variant.end]
  return "\n".join(lines) + "\n"


def inception_note(report) -> list[str]:
  """What the Inception FID column holds, or what it needs."""
  if any("fid_inception" in e for e in report["samplers"].values()):
    return [
      "Inception FID: the FID Inception (pytorch-fid's network and release "
      "weights) on the same samples against the 1,797 digits, each 8x8 "
      "image upsampled to 299 (`python benchmarks/demo.py --inception F`, "
      "after the timed demo): comparable between the rows, not with "
      "published numbers of other datasets and resolutions."
    ]
  return [
    "Inception FID: **needs the FID Inception's release weights**, which "
    "cannot be downloaded on the machine that made this table (no network "
    "but the package registries). Convert them once (docs/evaluation.md) "
    "and run `python benchmarks/demo.py --inception "
    "inception_fid.safetensors` to fill the column; the code behind it is "
    "tested with random weights (tests/integration/test_pipeline.py)."
  ]


def write_section(
  path: pathlib.Path,
  section: str,
  begin: str = SECTION_BEGIN,
  end: str = SECTION_END,
) -> None:
  """Replaces one marked section of BENCHMARKS.md, keeping everything else.

  `section` starts with `begin` and ends with `end`; without those markers
  in the file it is appended.
  """
  text = path.read_text() if path.exists() else "# Benchmarks\n\n"
  if begin in text and end in text:
    head = text[: text.index(begin)]
    tail = text[text.index(end) + len(end) :].lstrip("\n")
    text = head + section + ("\n" + tail if tail else "")
  else:
    text = text.rstrip("\n") + "\n\n" + section
  path.write_text(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/boot_jax_demo_benchmark")
  parser.add_argument("--keep", action="store_true", help="keep the workdir")
  parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
  parser.add_argument(
    "--rerender",
    type=float,
    default=None,
    metavar="SECONDS",
    help="only redo the table from an existing --workdir that took SECONDS",
  )
  parser.add_argument(
    "--inception",
    default=None,
    help="FID Inception weights (.safetensors): fills the Inception column",
  )
  which = parser.add_mutually_exclusive_group()
  which.add_argument(
    "--boot",
    action="store_true",
    help="run configs/digits.py:boot (BOOT alone) instead of the demo",
  )
  which.add_argument(
    "--flow",
    action="store_true",
    help="run configs/digits_flow.py (a flow-matching teacher), then its "
    ":boot variant on the same teacher (untimed)",
  )
  args = parser.parse_args()
  variant = VARIANTS["boot" if args.boot else "flow" if args.flow else "refine"]
  config = variant.config
  if args.inception and not os.path.isfile(args.inception):
    parser.error(f"--inception {args.inception} does not exist")
  if args.rerender is None:
    if os.path.exists(args.workdir):
      guards.check_workdir(args.workdir)  # only a work directory is removed
      shutil.rmtree(args.workdir)
    seconds = run_demo(args.workdir, config)
  else:
    seconds = args.rerender
  if args.inception:
    extra = inception_evaluation(args.workdir, args.inception)
    print(f"Inception evaluation took {extra:.0f} s (not in the demo time)")
  with open(os.path.join(args.workdir, "eval.json"), encoding="utf-8") as f:
    report = json.load(f)
  grids = sorted(glob.glob(os.path.join(args.workdir, "samples", "student_*")))
  if grids:
    shutil.copy(grids[-1], ROOT / "docs" / variant.samples)
  command = (
    f"python -m boot_jax.train --config {config} --workdir /tmp/boot_digits"
  )
  if variant.flow:
    boot_fid = boot_alone_fid(args.workdir, config, args.keep)
    rows = flow_bars(report, boot_fid)
  else:
    rows = bars(report, variant.refine, seconds)
  pixels = pixel_distances(args.workdir)
  write_section(
    pathlib.Path(args.out),
    markdown(report, seconds, command, rows, variant, pixels),
    variant.begin,
    variant.end,
  )
  for name, ok, measured in rows:
    print(f"{'PASS' if ok else 'MISS'}  {name}: {measured}")
  ratio = pixels["student 1 step"] / pixels["teacher DDIM 50"]
  print(f"pixel-space FD of the student / teacher DDIM-50: {ratio:.2f}x")
  print(f"demo wall time {seconds:.0f} s; wrote {args.out}")
  if not args.keep and args.rerender is None:
    shutil.rmtree(args.workdir)


if __name__ == "__main__":
  main()
