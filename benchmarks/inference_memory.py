r"""Peak host memory of training, sampling, evaluating and exporting the
digits demo, each as its own process; writes a table into
docs/BENCHMARKS.md.

    python benchmarks/inference_memory.py [--workdir /tmp/boot_mem] \
      [--teacher_steps 200] [--steps 200]

The demo's configs as shipped (configs/digits.py: BOOT, then the
refinement phase; its teacher recipe); only the step counts are shortened
(memory does not grow with steps).
Peak resident memory is the process's own VmHWM, read at exit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import time

from boot_jax import testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN = "<!-- inference-memory: begin -->"
END = "<!-- inference-memory: end -->"


def peak_rss(module: str, *args) -> tuple[float, float]:
  """Runs `python -m module args`; returns (peak RSS in MiB, seconds)."""
  t0 = time.perf_counter()
  proc = subprocess.run(
    testing.peak_rss_argv(module, *args),
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  seconds = time.perf_counter() - t0
  if proc.returncode != 0:
    sys.exit(f"{module} failed:\n{proc.stderr[-3000:]}")
  return testing.peak_rss_mib(proc.stderr), seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", default="/tmp/boot_mem")
  parser.add_argument("--teacher_steps", type=int, default=200)
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  work = pathlib.Path(args.workdir)
  teacher = work / "teacher"
  rows = []
  rows.append(
    (
      "train_teacher (configs/digits_teacher.py)",
      *peak_rss(
        "boot_jax.train_teacher",
        "--config",
        "configs/digits_teacher.py",
        "--workdir",
        teacher,
        f"--config.train.steps={args.teacher_steps}",
      ),
    )
  )
  rows.append(
    (
      "train (configs/digits.py, BOOT and refinement, no final evaluation)",
      *peak_rss(
        "boot_jax.train",
        "--config",
        "configs/digits.py",
        "--workdir",
        work / "boot",
        f"--config.teacher.path={teacher}",
        f"--config.train.steps={args.steps}",
        # The refinement phase holds a fake network and its Adam too.
        f"--config.refine.steps={args.steps}",
        "--config.eval.final=false",
      ),
    )
  )
  rows.append(
    (
      "sample --num 1024 (student)",
      *peak_rss(
        "boot_jax.sample",
        "--workdir",
        work / "boot",
        "--out",
        work / "s.npz",
        "--num",
        "1024",
      ),
    )
  )
  rows.append(
    (
      "sample --num 1024 --sampler teacher --steps 50",
      *peak_rss(
        "boot_jax.sample",
        "--workdir",
        work / "boot",
        "--out",
        work / "t.npz",
        "--num",
        "1024",
        "--sampler",
        "teacher",
      ),
    )
  )
  rows.append(
    (
      "evaluate (every sampler, FID classifier)",
      *peak_rss("boot_jax.evaluate", "--workdir", work / "boot"),
    )
  )
  rows.append(
    (
      "export",
      *peak_rss(
        "boot_jax.export",
        "--workdir",
        work / "boot",
        "--out",
        work / "export",
        "--overwrite",
      ),
    )
  )
  import jax  # noqa: PLC0415 - only for the device line

  lines = [
    BEGIN,
    "## Peak host memory: training vs inference (digits demo)",
    "",
    f"`python benchmarks/inference_memory.py --teacher_steps "
    f"{args.teacher_steps} --steps {args.steps}` on "
    f"{platform.machine()}, {os.cpu_count()} CPU cores, "
    f"{jax.devices()[0].platform}; {datetime.date.today()}. Each command "
    "is its own process; peak resident memory is its VmHWM. The "
    "inference commands build no optimizer and read only the parameters "
    "from the checkpoint.",
    "",
    "| command | peak RSS (MiB) | wall time (s) |",
    "|---|---:|---:|",
  ]
  for name, mib, seconds in rows:
    lines.append(f"| {name} | {mib:.0f} | {seconds:.1f} |")
  lines.append(END)
  table = "\n".join(lines)
  print(table)
  path = ROOT / "docs" / "BENCHMARKS.md"
  text = path.read_text()
  if BEGIN in text:
    head, rest = text.split(BEGIN, 1)
    text = head + table + rest.split(END, 1)[1]
  else:
    text = text.rstrip() + "\n\n" + table + "\n"
  path.write_text(text)


if __name__ == "__main__":
  main()
