"""Checkpoints: SIGKILL and SIGTERM at any moment, then resume, bit for bit.

Runs the train CLI in subprocesses on the small mixture config, because a
kill must hit a real process. The uninterrupted run is a subprocess too, so
both use the same compiled program on the same machine and mesh. The run
is 200 BOOT steps and then 100 of the refinement phase (boot.refine): the
kill after step 270 resumes from the refinement's checkpoint of step 250.
One work directory goes through every stop in turn (each restart resumes
from what the previous stop left), which costs one run's steps, not one
per stop.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import saved_state, wait_for

from boot_jax.runtime import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 300  # BOOT_STEPS, then the refinement's
BOOT_STEPS = 200
ARGS = [
  "--config",
  str(ROOT / "configs" / "gmm.py"),
  f"--config.train.steps={BOOT_STEPS}",
  "--config.boot.refine=true",
  f"--config.refine.steps={STEPS - BOOT_STEPS}",
  "--config.refine.lr=1e-4",
  "--config.refine.fake_lr=1e-3",
  "--config.train.ckpt_every=50",
  "--config.train.log_every=10",
  "--config.train.batch_size=64",
  "--config.optim.ema_decay=0.99",
  "--config.eval.final=false",
]


def _start(workdir):
  return subprocess.Popen(
    [sys.executable, "-m", "boot_jax.train", *ARGS, "--workdir", str(workdir)],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def _finish(workdir):
  proc = _start(workdir)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  return out


def _logged_step(workdir) -> int:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  steps = []
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError):
      pass
  return max(steps, default=0)


def _assert_same(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _finish(workdir)
  return saved_state(workdir)


def _kill(workdir, after_step, sig=signal.SIGKILL):
  """Starts a run on `workdir` and sends `sig` once it has logged
  `after_step` (0: once config.json exists); returns (exit code, stderr)."""
  proc = _start(workdir)
  if after_step:
    wait_for(lambda: _logged_step(workdir) >= after_step, proc)
  else:
    wait_for(lambda: (workdir / "config.json").exists(), proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  return proc.returncode, err


def test_kills_at_any_moment_then_resume_is_bitwise_identical(
  tmp_path, reference
):
  """One work directory through every kind of stop, each followed by a
  restart of the same command: SIGKILL before the first checkpoint,
  SIGTERM in BOOT (which saves that step's checkpoint), SIGKILL in BOOT,
  SIGKILL in the refinement phase; then the run finishes bit for bit as
  the uninterrupted one."""
  workdir = tmp_path / "w"
  code, _ = _kill(workdir, 0)
  assert code == -signal.SIGKILL

  code, err = _kill(workdir, 70, signal.SIGTERM)
  assert code == 128 + signal.SIGTERM, err[-2000:]
  assert "received SIGTERM at step" in err
  step = int(err.split("received SIGTERM at step ")[1].split(";")[0])
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), read_only=True)
  assert ckpt.latest_step() == step
  ckpt.close()
  assert int(saved_state(workdir).step) == step  # restorable

  # In BOOT (after the SIGTERM's step), then in the refinement phase.
  for after in (max(120, step + 10), 270):
    code, _ = _kill(workdir, after)
    assert code == -signal.SIGKILL
  out = _finish(workdir)
  assert "resuming from the checkpoint of step" in out
  state = saved_state(workdir)
  assert int(state.step) == STEPS
  _assert_same(state, reference)
  # metrics.jsonl holds each logged step once, in order.
  rows = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["step"] for r in rows] == list(range(10, STEPS + 1, 10))
