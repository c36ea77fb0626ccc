"""The train CLI: user errors give one line and a non-zero exit."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GMM = str(ROOT / "configs" / "gmm.py")
DIGITS = str(ROOT / "configs" / "digits.py")


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
    (
      ["--config", GMM, "--config.teacher.schedule=bogus"],
      "unknown schedule 'bogus'",
    ),
    (
      ["--config", DIGITS, "--config.teacher.schedule=rectified_flow"],
      "this config has no schedule section teacher.schedule",
    ),
    (["--config", GMM, "--config.train.steps=abc"], "invalid literal"),
    (["--config", GMM], "--workdir is required"),
    (
      [
        "--config",
        GMM,
        "--config.mesh.data=-1",
        "--config.train.batch_size=100",
      ],
      "not divisible by the 8 devices",
    ),
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


@pytest.mark.parametrize(
  "override,expected",
  [
    ("optim.ema_decay=1.0", "optim.ema_decay must be in [0, 1)"),
    ("optim.ema_decay=1.5", "optim.ema_decay must be in [0, 1)"),
    ("optim.ema_decay=-0.1", "optim.ema_decay must be in [0, 1)"),
    ("optim.lr=nan", "optim.lr must be finite and > 0"),
    ("optim.lr=-1.0", "optim.lr must be finite and > 0"),
    ("optim.b1=2.0", "optim.b1 must be in [0, 1)"),
  ],
)
def test_bad_optimizer_values_are_refused_at_start(
  tmp_path, override, expected
):
  """Refused before anything is built: no work directory, no progress."""
  work = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "boot_jax.train",
      "--config",
      GMM,
      f"--config.{override}",
      "--workdir",
      str(work),
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
  assert proc.returncode != 0 and len(errors) == 1, proc.stderr
  assert expected in errors[0]
  assert not work.exists()
  assert "teacher" not in proc.stdout  # the run's first line never came


def _metrics(workdir):
  import json

  path = workdir / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  """lr 1e30 makes the loss non-finite within a few steps."""
  work = tmp_path / "w"
  common = [
    "--config",
    GMM,
    "--config.train.steps=200",
    "--config.train.batch_size=32",
    "--config.train.log_every=1",
    "--config.optim.warmup_steps=0",
    "--config.eval.final=false",
    "--workdir",
    str(work),
  ]
  code, _, err = _run(
    *common, "--config.train.ckpt_every=1", "--config.optim.lr=1e30"
  )
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert code != 0 and len(lines) == 1, err[-2000:]
  assert "became non-finite at step" in lines[0]
  bad = int(lines[0].split("non-finite at step ")[1].split(";")[0])
  assert f"the last good checkpoint is step {bad - 1}" in lines[0]
  saved = sorted(
    int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()
  )
  assert saved and max(saved) == bad - 1
  # The bad step's row is logged (with its non-finite loss) before the stop.
  rows = _metrics(work)
  assert rows[-1]["step"] == bad
  assert rows[-1]["loss"] != rows[-1]["loss"] or abs(rows[-1]["loss"]) == float(
    "inf"
  )

  # With nan_policy=skip and a budget for skipped steps the run completes
  # and counts them (over the budget it fails:
  # tests/integration/test_hostile_inputs.py).
  work2 = tmp_path / "w2"
  common[-1] = str(work2)
  code, _, err = _run(
    *common,
    "--config.train.nan_policy=skip",
    "--config.train.max_skipped_fraction=1.0",
    "--config.optim.lr=1e30",
    "--config.train.steps=30",
  )
  assert code == 0, err[-2000:]
  rows = _metrics(work2)
  assert rows[-1]["step"] == 30 and rows[-1]["skipped"] > 0


def test_schedule_by_name(tmp_path):
  """`--config.teacher.schedule=rectified_flow` puts a mixture preset on
  the flow (the section's shift, set beside it, is kept); the teacher
  sampler then takes the Euler steps at the shifted times (those of
  diffusers' FlowMatchEulerDiscreteScheduler: tests/unit/test_diffusion.py)
  on the exact velocity (float32 against float64: 1e-5)."""
  import json

  import ml_collections
  import numpy as np

  from boot_jax import teachers
  from boot_jax.diffusion import predictions

  work = tmp_path / "f"
  code, _, err = _run(
    "--config",
    GMM,
    "--config.teacher.schedule=rectified_flow",
    "--config.teacher.schedule.shift=3.0",
    "--config.train.steps=20",
    "--config.train.log_every=20",
    "--config.eval.final=false",
    "--workdir",
    str(work),
  )
  assert code == 0, err[-2000:]
  saved = json.loads((work / "config.json").read_text())["teacher"]
  assert saved["schedule"]["type"] == "continuous"
  assert saved["schedule"]["name"] == "rectified_flow"
  assert saved["schedule"]["shift"] == 3.0
  out = tmp_path / "t.npz"
  proc = subprocess.run(
    [
      sys.executable, "-m", "boot_jax.sample", "--workdir", str(work),
      "--out", str(out), "--num", "16", "--sampler", "teacher", "--steps", "4",
    ],
    capture_output=True, text=True, timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = np.load(out)
  teacher = teachers.build_teacher(ml_collections.ConfigDict(saved))
  ts = teacher.schedule.timesteps(4)
  shifted = predictions.ContinuousSchedule("rectified_flow", shift=3.0)
  np.testing.assert_array_equal(ts, shifted.timesteps(4))
  assert np.all(ts[1:] > np.linspace(1, 1e-3, 4)[1:])  # the shift acted
  x = np.asarray(got["noise"], np.float64)
  for t, s in zip(ts, [*ts[1:], 0.0], strict=True):
    x0 = np.asarray(teacher.x0(teacher.params, x, np.full(16, t)), np.float64)
    u = (x - x0) / t  # the exact velocity eps - x0 read from x0
    x = x + (s - t) * u
  np.testing.assert_allclose(got["images"], x, atol=1e-5)


def test_guided_student_sample_cli(tmp_path):
  """A guidance-conditioned student samples at any --guidance w."""
  import numpy as np

  work = tmp_path / "g"
  code, _, err = _run(
    "--config",
    GMM + ":circle_guided",
    "--config.train.steps=50",
    "--config.train.log_every=50",
    "--config.eval.final=false",
    "--workdir",
    str(work),
  )
  assert code == 0, err[-2000:]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  outs = {}
  for w in ("1", "4", None):
    out = tmp_path / f"s{w}.npz"
    args = ["--workdir", str(work), "--out", str(out), "--num", "16"]
    if w is not None:
      args.append(f"--guidance={w}")
    proc = subprocess.run(
      [sys.executable, "-m", "boot_jax.sample", *args],
      capture_output=True,
      text=True,
      env=env,
      timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    outs[w] = np.load(out)
  np.testing.assert_array_equal(outs["1"]["noise"], outs["4"]["noise"])
  assert np.abs(outs["1"]["images"] - outs["4"]["images"]).max() > 0
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "boot_jax.sample",
      "--workdir",
      str(work),
      "--out",
      str(tmp_path / "bad.npz"),
      "--guidance=-1",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
  assert proc.returncode != 0 and lines == [
    "error: --guidance must be finite and >= 0, got -1.0"
  ]
  assert not (tmp_path / "bad.npz").exists()
