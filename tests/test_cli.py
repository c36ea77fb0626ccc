"""The train CLI: user errors give one line and a non-zero exit."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GMM = str(ROOT / "configs" / "gmm.py")


def _run(*args, cwd=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-m", "boot_jax.train", *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=env,
    timeout=300,
  )
  # absl may log INFO lines (e.g. about absent TPU libraries); the error
  # is the last line and the only one that starts with "error:".
  lines = proc.stderr.splitlines()
  errors = [line for line in lines if line.startswith("error:")]
  return proc.returncode, errors, proc.stderr


@pytest.mark.parametrize(
  "args,expected",
  [
    (["--config", "configs/missing.py"], "No such file"),
    (["--config", GMM, "--config.train.nope=1"], "unknown config key 'nope'"),
    (["--config", GMM, "--config.train.steps=-5"], "train.steps must be >= 0"),
    (["--config", GMM, "--config.boot.num_steps=0"], "boot.num_steps"),
    (["--config", GMM + ":bogus"], "unknown gmm preset 'bogus'"),
    (["--config", GMM, "--config.train.steps=abc"], "invalid literal"),
    (["--config", GMM], "--workdir is required"),
  ],
)
def test_user_errors_are_one_line(tmp_path, args, expected):
  if (
    "--config" in args
    and "--workdir" not in args
    and expected != ("--workdir is required")
  ):
    args = [*args, "--workdir", str(tmp_path / "w")]
  code, errors, stderr = _run(*args, cwd=tmp_path)
  assert code != 0
  assert len(errors) == 1, stderr
  assert expected in errors[0], stderr
  assert "Traceback" not in stderr
