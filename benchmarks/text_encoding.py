r"""Online vs cached prompt encoding: what each costs a text-to-image run.

    python benchmarks/text_encoding.py [--prompts 20000] [--write]

On a tiny random Stable Diffusion folder (written by diffusers' PyTorch
code, as the tests do; CLIP with 2 layers of width 32) and a prompt file of
`--prompts` random prompts, for `teacher.text_encoding` online and cache:

* preparation: the seconds from nothing to the first training step's
  inputs (the index; for `cache` also encoding every prompt) and the disk
  it takes;
* the steady-state train step: seconds per step, draw (prompts, tokens,
  encoding) included, batch 8 at 64 px, median of 10 steps after 2 of
  warm-up;
* peak resident memory of the process (VmHWM), each mode in its own
  process.

The SD-size side (CLIP ViT-L/14 next to SD 1.5's BOOT step) is counted by
XLA in `benchmarks/sd_memory.py`; docs/text_to_image.md puts both
together. `--write` replaces the table there.
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
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN = "<!-- text encoding: begin -->"
END = "<!-- text encoding: end -->"

# Runs in a fresh process per mode: prints one JSON line.
_CHILD = r"""
import json, os, shutil, statistics, sys, time
import jax, numpy as np
from boot_jax.config import recipes
from boot_jax.config import defaults
from boot_jax.training import trainer
folder, prompts, cache, encoding = sys.argv[1:5]
t0 = time.perf_counter()
c = recipes.sd_boot_config(resolution=64, prediction="eps")
c.teacher.path = folder
c.teacher.prompts = prompts
c.teacher.prompt_cache = cache
c.teacher.text_encoding = encoding
c.train.batch_size = 8
c.mesh.data = 1
s = trainer.setup(c)
state = s.init_state()
batch = s.draw(0, 0)
jax.block_until_ready(batch)
prepared = time.perf_counter() - t0
times = []
for step in range(12):
  t = time.perf_counter()
  state, m = s.train_step(state, s.teacher.params, s.draw(step, 0))
  jax.block_until_ready(m)
  times.append(time.perf_counter() - t)
du = sum(
  os.path.getsize(os.path.join(d, f))
  for d, _, fs in os.walk(cache) for f in fs
)
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
print(json.dumps(dict(
  prepared_s=prepared, step_s=statistics.median(times[2:]), disk=du,
  peak_mib=int(peak[0].split()[1]) / 1024)))
"""


def write_prompts(path: pathlib.Path, num: int) -> None:
  import numpy as np  # noqa: PLC0415

  rng = np.random.default_rng(0)
  words = np.array("a the red blue cat dog square circle house tree".split())
  rows = words[rng.integers(0, len(words), (num, 8))]
  path.write_text("\n".join(" ".join(r) for r in rows.tolist()))


def measure(folder, prompts, encoding: str) -> dict:
  cache = tempfile.mkdtemp(prefix=f"boot_jax_{encoding}_")
  try:
    proc = subprocess.run(
      [sys.executable, "-c", _CHILD, folder, prompts, cache, encoding],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
      check=False,
    )
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  if proc.returncode != 0:
    sys.exit(f"{encoding} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--prompts", type=int, default=20000)
  p.add_argument("--write", action="store_true")
  args = p.parse_args()
  import jax  # noqa: PLC0415

  from boot_jax import testing

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    testing.make_folder(tmp, heads=1)
    prompts = tmp / "prompts.txt"
    write_prompts(prompts, args.prompts)
    rows = {e: measure(tmp / "sd", prompts, e) for e in ("online", "cache")}
  lines = [
    "| text_encoding | to the first batch (s) | train step (s) | "
    "cache on disk | peak memory (MiB) |",
    "|---|---|---|---|---|",
  ]
  for name, r in rows.items():
    lines.append(
      f"| {name} | {r['prepared_s']:.1f} | {r['step_s']:.3f} | "
      f"{r['disk'] / 2**20:.1f} MiB | {r['peak_mib']:.0f} |"
    )
  table = "\n".join(lines)
  print(table)
  if args.write:
    import demo  # noqa: PLC0415

    note = (
      f"`python benchmarks/text_encoding.py --prompts {args.prompts} "
      f"--write`; {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} CPU cores, jax {jax.__version__}, "
      f"{datetime.date.today()}. Tiny SD folder (one attention head; "
      f"CLIP: 2 layers of width 32), {args.prompts:,} prompts, batch 8 at "
      "64 px, one CPU device."
    )
    demo.write_section(
      ROOT / "docs" / "text_to_image.md",
      f"{BEGIN}\n{note}\n\n{table}\n{END}\n",
      BEGIN,
      END,
    )


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT / "benchmarks"))
  main()
