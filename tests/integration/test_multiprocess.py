"""Multi-process runs through launch/local.sh: 2 processes x 4 CPU devices.

Each process is a real JAX process joined through a localhost coordinator;
collectives go over gloo. The same config on 8 devices in one process is
the reference. Tolerance 1e-6 as in test_sharding: gloo's all-reduces may
sum in another order than the in-process ones, a few ulp per value.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import launch_local, run_module, run_sample, saved_state

from boot_jax.runtime import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = [
  "--config",
  str(ROOT / "configs" / "gmm.py"),
  "--config.train.batch_size=64",
  "--config.train.log_every=10",
  "--config.mesh.data=2",
  "--config.mesh.fsdp=4",
  "--config.eval.final=false",
]

pytestmark = pytest.mark.skipif(
  sys.platform != "linux", reason="local.sh needs bash 5 on Linux"
)


def _final_params(workdir):
  state = saved_state(workdir, one_device=True)
  return jax.device_get(state.params), int(state.step)


def test_two_processes_equal_one(tmp_path):
  proc = launch_local(tmp_path / "mp", *ARGS, "--config.train.steps=20")
  assert proc.returncode == 0, proc.stdout[-3000:]
  # Only process 0 printed progress and wrote metrics.
  assert "[process 0] step 20/20" in proc.stdout
  assert "[process 1] step" not in proc.stdout
  rows = (tmp_path / "mp" / "metrics.jsonl").read_text().splitlines()
  assert len(rows) == 2

  single = subprocess.run(
    [
      sys.executable,
      "-m",
      "boot_jax.train",
      *ARGS,
      "--config.train.steps=20",
      "--workdir",
      str(tmp_path / "sp"),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    check=False,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  multi, step_m = _final_params(tmp_path / "mp")
  ref, step_s = _final_params(tmp_path / "sp")
  assert step_m == step_s == 20
  diff = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(multi), jax.tree.leaves(ref), strict=True)
  )
  assert diff <= 1e-6

  # The 2-process run samples on 1 and 2 devices as on the 8-device mesh
  # it was trained on (relative 1e-5: partitioned reductions, a few ulp).

  def sample(out, devices, *extra):
    code, _, err = run_sample(
      tmp_path / "mp",
      tmp_path / out,
      "--num",
      "96",
      *extra,
      env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"},
    )
    assert code == 0, err[-3000:]
    return np.load(tmp_path / out)["images"]

  ref = sample("s8.npz", 8, "--mesh", "data=2,fsdp=4")
  for devices in (1, 2):
    got = sample(f"s{devices}.npz", devices)
    rel = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    assert rel <= 1e-5, (devices, rel)
  code, out, err = run_module(
    "boot_jax.evaluate",
    "--workdir",
    tmp_path / "mp",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
  )
  assert code == 0, err[-3000:]


def _pid_of(process_id: int) -> int | None:
  out = subprocess.run(
    ["pgrep", "-f", f"boot_jax.train .*--process_id={process_id}"],
    capture_output=True,
    text=True,
    check=False,
  ).stdout.split()
  return int(out[0]) if out else None


def test_killed_process_stops_the_other_then_resume(tmp_path):
  workdir = tmp_path / "w"
  launcher = launch_local(
    workdir,
    *ARGS,
    "--config.train.steps=100000",
    "--config.train.ckpt_every=20",
    popen=True,
  )
  try:
    deadline = time.time() + 300
    while time.time() < deadline:
      ckpts = workdir / "checkpoints"
      if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
        break
      assert launcher.poll() is None, launcher.communicate()[0][-3000:]
      time.sleep(1)
    else:
      pytest.fail("no checkpoint within 300 s")
    victim = _pid_of(1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    out, _ = launcher.communicate(timeout=120)
    # local.sh exits once every process has: the survivor stopped itself.
    elapsed = time.time() - killed_at
  finally:
    if launcher.poll() is None:
      launcher.kill()
  assert launcher.returncode != 0
  assert elapsed < 60, elapsed
  assert "local.sh: process 1 exited with status 137" in out
  assert "local.sh: process 0 exited with status" in out
  # JAX's coordination service names the cause in process 0's log.
  assert "another task died" in out or "multi-process run failed" in out

  last = checkpoint.Checkpointer(
    str(workdir / "checkpoints"), read_only=True
  ).latest_step()
  assert last is not None and last >= 20
  proc = launch_local(workdir, *ARGS, f"--config.train.steps={last + 20}")
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert f"resuming from the checkpoint of step {last}" in proc.stdout
  _, step = _final_params(workdir)
  assert step == last + 20
