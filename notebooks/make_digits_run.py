r"""Writes notebooks/digits_run/: the demo's trained run, parameters only.

    python -m boot_jax.train --config configs/digits.py --workdir W
    python notebooks/make_digits_run.py --workdir W

The notebook's FAST mode loads this folder instead of training (a digits
teacher and a student worth looking at take the demo's 8 minutes). It is
a work directory as `train` writes one, cut to what sampling reads: the
run's config.json (its teacher's path made relative: `teacher`), the
student's parameters (the EMA the samplers use) and step in
`checkpoints/`, and the teacher's config.json and parameters in
`teacher/`; no optimizer state, no metrics. `boot_jax.load` and the
`sample`, `evaluate` and `export` programs read it through the ordinary
checkpoint code; `train` cannot resume it (there is no optimizer state).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil

import numpy as np

from boot_jax.runtime import checkpoint, paths
from boot_jax.runtime import workdir as workdir_lib
from boot_jax.sampling import inference

OUT = pathlib.Path(__file__).resolve().parent / "digits_run"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished demo run")
  parser.add_argument("--out", default=str(OUT))
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  if out.exists() and any(out.iterdir()):
    parser.error(f"--out {out} is not empty; remove it first")
  model, params, step = inference.load(args.workdir)
  config = workdir_lib.load_config(args.workdir)
  teacher_dir = config.teacher.path
  if paths.abspath(teacher_dir) != paths.abspath(
    os.path.join(args.workdir, "teacher")
  ):
    parser.error(f"the run's teacher {teacher_dir} is not W/teacher")
  config.teacher.path = "teacher"  # relative: inside the work directory
  workdir_lib.write_config(str(out), config)
  ckpt = checkpoint.Checkpointer(str(out / "checkpoints"), async_save=False)
  state = {"params": params, "step": np.asarray(step, np.int32)}
  ckpt.save(step, {"state": state})
  ckpt.close()
  (out / "teacher").mkdir()
  shutil.copy(
    os.path.join(teacher_dir, "config.json"), out / "teacher" / "config.json"
  )
  teacher_steps = checkpoint.finished_steps(
    os.path.join(teacher_dir, "checkpoints")
  )
  ckpt = checkpoint.Checkpointer(
    str(out / "teacher" / "checkpoints"), async_save=False
  )
  ckpt.save(max(teacher_steps), {"params": model.teacher.params})
  ckpt.close()
  size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
  print(f"wrote {out} ({size / 2**20:.1f} MiB), student step {step}")


if __name__ == "__main__":
  main()
