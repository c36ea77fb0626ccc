r"""How soon each command-line program prints its first line of progress.

    python benchmarks/first_line.py

Runs every program as a user would, each its own process from a cold
start (imports included), and times its first line on stdout. Long
commands (the demo's `train`, `train_teacher`, `fid_stats`) are stopped
with Ctrl-C once that line came; the others run to the end on a 2-step
mixture run made first. Writes the table into docs/BENCHMARKS.md with the
command, the machine and the date. Everything runs in a private
temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from boot_jax import testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import demo  # noqa: E402

BEGIN = "<!-- first-line: begin -->"
END = "<!-- first-line: end -->"
GMM = ("--config", "configs/gmm.py", "--config.train.batch_size=64")


def first_line(args, stop_after_first: bool, timeout: float = 900):
  """Runs `python -m args`; returns (seconds to the first stdout line, that
  line, seconds in all, exit code)."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  t0 = time.perf_counter()
  proc = subprocess.Popen(
    [sys.executable, "-m", *map(str, args)],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
    cwd=ROOT,
    env=env,
  )
  first, line = None, ""
  for text in proc.stdout:
    if text.strip():
      first, line = time.perf_counter() - t0, text.strip()
      break
  if stop_after_first:
    proc.send_signal(signal.SIGINT)
  for _ in proc.stdout:  # drain, so the program never blocks on the pipe
    pass
  code = proc.wait(timeout=timeout)
  return first, line, time.perf_counter() - t0, code


def inception_pth(path: pathlib.Path) -> None:
  """A PyTorch .pth of random FID Inception weights (for `inception`)."""
  import torch  # noqa: PLC0415 - the test extra's; only this row needs it
  from safetensors.numpy import load_file  # noqa: PLC0415

  weights = path.with_suffix(".safetensors")
  testing.random_inception_weights(weights)
  state = {
    k: torch.from_numpy(np.array(v)) for k, v in load_file(weights).items()
  }
  torch.save(state, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
  args = parser.parse_args()
  work = pathlib.Path(tempfile.mkdtemp(prefix="boot_jax_first_line_"))
  weights = work / "inception.safetensors"
  testing.random_inception_weights(weights)
  gmm = work / "gmm"
  cases = [
    ("train (the demo, configs/digits.py)", True,
     ("boot_jax.train", "--config", "configs/digits.py", "--workdir",
      work / "digits")),
    ("train_teacher (configs/digits_teacher.py)", True,
     ("boot_jax.train_teacher", "--config", "configs/digits_teacher.py",
      "--workdir", work / "teacher")),
    ("train (configs/gmm.py, 2 steps)", False,
     ("boot_jax.train", *GMM, "--config.train.steps=2",
      "--config.eval.final=false", "--workdir", gmm)),
    ("sample --num 64", False,
     ("boot_jax.sample", "--workdir", gmm, "--out", work / "s.npz",
      "--num", 64)),
    ("evaluate", False, ("boot_jax.evaluate", "--workdir", gmm)),
    ("export", False,
     ("boot_jax.export", "--workdir", gmm, "--out", work / "export")),
    ("fid_stats --digits", True,
     ("boot_jax.fid_stats", "--digits", "--inception", weights, "--out",
      work / "ref.npz")),
    ("inception --pth", False,
     ("boot_jax.inception", "--pth", work / "inception.pth", "--out",
      work / "converted.safetensors")),
  ]  # fmt: skip
  rows = []
  for name, stop, argv in cases:
    if argv[0] == "boot_jax.inception":
      inception_pth(work / "inception.pth")
    first, line, total, code = first_line(argv, stop)
    shown = "never" if first is None else f"{first:.1f}"
    print(f"{name}: first line after {shown} s: {line[:90]!r} (exit {code})")
    rows.append((name, first, line, total, code, stop))
  lines = [
    BEGIN,
    "## The first line of every program",
    "",
    f"`python benchmarks/first_line.py` on {platform.machine()}, "
    f"{os.cpu_count()} CPU cores; {datetime.date.today().isoformat()}. "
    "Seconds from starting the process (imports included) to its first "
    "line on stdout; rows marked 'stopped' were interrupted with Ctrl-C "
    "after that line (their exit code is the interruption's).",
    "",
    "| command | first line (s) | the line | total (s) | exit |",
    "|---|---:|---|---:|---:|",
  ]
  for name, first, line, total, code, stop in rows:
    shown = "never" if first is None else f"{first:.1f}"
    text = line[:70].replace("|", "/")
    end = "stopped" if stop else f"{total:.1f}"
    lines.append(f"| {name} | {shown} | `{text}` | {end} | {code} |")
  lines += ["", END]
  demo.write_section(
    pathlib.Path(args.out), "\n".join(lines) + "\n", BEGIN, END
  )
  shutil.rmtree(work)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
