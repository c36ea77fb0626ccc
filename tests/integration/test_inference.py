"""Inference anywhere: a run trained on 8 devices samples on 1, 2 or 8; the
sampler needs no optimizer; the exported artifact runs without boot_jax.

The reference is sampling on the training mesh (data=2, fsdp=4). Tolerance
1e-5 relative max difference: the same float32 network on other layouts
differs only by XLA's partitioned matmul reduction order (a few ulp).
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import error_lines, run_export, run_module, run_sample

ROOT = pathlib.Path(__file__).resolve().parents[2]
GMM = str(ROOT / "configs" / "gmm.py")


def _devices(n: int) -> dict:
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
  """The mixture distilled for 10 steps on data=2 x fsdp=4 (8 devices)."""
  work = tmp_path_factory.mktemp("fsdp") / "w"
  code, _, err = run_module(
    "boot_jax.train",
    "--config",
    GMM,
    "--config.train.steps=10",
    "--config.train.batch_size=64",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=4",
    "--config.eval.final=false",
    "--workdir",
    work,
  )
  assert code == 0, err[-3000:]
  return work


def _sample(work, out, *extra, devices=8):
  code, stdout, err = run_sample(
    work,
    out,
    "--num",
    "300",
    "--batch_size",
    "128",
    *extra,
    env=_devices(devices),
  )
  assert code == 0, err[-3000:]
  return np.load(out)


def _rel(a, b) -> float:
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_sample_on_any_device_count(fsdp_run, tmp_path):
  ref = _sample(fsdp_run, tmp_path / "ref.npz", "--mesh", "data=2,fsdp=4")
  one = _sample(fsdp_run, tmp_path / "one.npz", devices=1)
  two = _sample(fsdp_run, tmp_path / "two.npz", devices=2)
  np.testing.assert_array_equal(one["noise"], ref["noise"])
  assert ref["images"].shape == (300, 2)
  assert _rel(one["images"], ref["images"]) <= 1e-5
  assert _rel(two["images"], ref["images"]) <= 1e-5
  # The teacher's sampler too, on one device.
  t1 = _sample(
    fsdp_run,
    tmp_path / "t1.npz",
    "--sampler",
    "teacher",
    "--steps",
    "8",
    devices=1,
  )
  t8 = _sample(
    fsdp_run, tmp_path / "t8.npz", "--sampler", "teacher", "--steps", "8"
  )
  assert _rel(t1["images"], t8["images"]) <= 1e-5


def test_evaluate_on_one_device(fsdp_run, tmp_path):
  code, out, err = run_module(
    "boot_jax.evaluate", "--workdir", fsdp_run, env=_devices(1)
  )
  assert code == 0, err[-3000:]
  assert "agreement" in out
  assert "evaluate:" in out  # progress lines
  assert (fsdp_run / "eval.json").is_file()


# The training side: an inference program imports none of it.
TRAINING = (
  "boot_jax.training.optim",
  "boot_jax.distill.step",
  "boot_jax.training.trainer",
  "boot_jax.distill.state",
)
_NO_TRAINING = """
import sys
from absl import app
from boot_jax import sample
from boot_jax.runtime import cli
flags = sample.define_flags()
def main(argv):
  sample.main(argv, flags)
  print("IMPORTED", sorted(m for m in sys.modules if m in TRAINING))
app.run(main, flags_parser=cli.parse_flags)
""".replace("TRAINING", repr(TRAINING))


def test_sample_never_builds_the_optimizer(fsdp_run, tmp_path):
  """Neither the optimizer nor the train step module is even imported."""
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      _NO_TRAINING,
      "--workdir",
      str(fsdp_run),
      "--out",
      str(tmp_path / "s.npz"),
      "--num",
      "8",
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "IMPORTED []" in proc.stdout, proc.stdout


# Runs the exported artifact with boot_jax made unimportable.
def test_export_runs_without_boot_jax(fsdp_run, tmp_path):
  out = tmp_path / "export"
  code, stdout, err = run_module(
    "boot_jax.export", "--workdir", fsdp_run, "--out", out, env=_devices(1)
  )
  assert code == 0, err[-3000:]
  assert (out / "README.md").is_file()
  assert "exp.call(params, eps)" in (out / "README.md").read_text()
  ref = _sample(fsdp_run, tmp_path / "s.npz", devices=1)
  np.save(tmp_path / "eps.npy", ref["noise"][:37])  # any batch size
  got = run_export(out, [tmp_path / "eps.npy"], tmp_path / "got.npy")
  assert float(np.max(np.abs(got - ref["images"][:37]))) <= 1e-6
  # An existing non-empty directory is refused without --overwrite.
  before = (out / "params.npz").stat().st_mtime_ns
  code, _, err = run_module(
    "boot_jax.export", "--workdir", fsdp_run, "--out", out
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1 and "--overwrite" in lines[0], err
  assert (out / "params.npz").stat().st_mtime_ns == before


@pytest.mark.parametrize(
  "args,expected",
  [
    (["--mesh", "data=16"], "needs 16 devices"),
    (["--mesh", "data=2,pipeline=4"], "expected axis=size pairs"),
    (["--batch_size", "3"], "not divisible by the 8 devices"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--seed", str(2**64)], "--seed must be in"),
    (["--guidance", "nan"], "finite"),
    (["--num", "0"], "--num must be >= 1"),
  ],
)
def test_sample_bad_requests_are_one_line(fsdp_run, tmp_path, args, expected):
  out = tmp_path / "s.npz"
  code, _, err = run_module(
    "boot_jax.sample", "--workdir", fsdp_run, "--out", out, *args
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1, err[-2000:]
  assert expected in lines[0], lines
  assert "Traceback" not in err
  assert not out.exists()


def test_unusable_work_directories_are_one_line(fsdp_run, tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  (old / "config.json").write_text('{"model": {}, "optim": {}}')
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((fsdp_run / "config.json").read_text())
  a_file = tmp_path / "f"
  a_file.write_text("x")
  cases = [
    ("boot_jax.sample", old, "neither a BOOT run nor a teacher run"),
    ("boot_jax.sample", empty, "has no checkpoints/"),
    ("boot_jax.evaluate", empty, "has no checkpoints/"),
    ("boot_jax.export", empty, "has no checkpoints/"),
    ("boot_jax.sample", tmp_path / "missing", "not a work directory"),
  ]
  for module, work, expected in cases:
    extra = {
      "boot_jax.sample": ["--out", tmp_path / "s.npz"],
      "boot_jax.export": ["--out", tmp_path / "e"],
    }.get(module, [])
    code, _, err = run_module(module, "--workdir", work, *extra)
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1, (module, err[-2000:])
    assert expected in lines[0], (module, lines)
  assert not (tmp_path / "e").exists()
  code, _, err = run_module(
    "boot_jax.export", "--workdir", fsdp_run, "--out", a_file
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1 and "is a file" in lines[0], err
  assert a_file.read_text() == "x"


# BOOT's side: teacher training imports none of it.
BOOT = (
  "boot_jax.distill.boot",
  "boot_jax.training.trainer",
  "boot_jax.distill.student",
  "boot_jax.sampling.inference",
)


@pytest.mark.parametrize("names", [TRAINING, BOOT])
def test_the_absence_tests_name_real_modules(names):
  """A renamed module would make an absence test pass without checking."""
  import importlib.util

  for name in names:
    assert importlib.util.find_spec(name) is not None, name


def test_teacher_training_does_not_import_boot():
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      "import sys, boot_jax.train_teacher; print(sorted(m for m in "
      f"sys.modules if m in {BOOT!r}))",
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  assert proc.stdout.strip() == "[]"


def test_family_checks_stay_in_the_teachers_package():
  """No family name checks or untyped extras outside boot_jax/teachers/."""
  pattern = re.compile(r"teacher\.name\s*[=!]=|\.extras\[|\.extras\.get")
  for path in (ROOT / "boot_jax").rglob("*.py"):
    text = path.read_text()
    if "teachers" in path.parts:
      continue
    assert not pattern.search(text), path


def test_docs_cite_only_files_in_the_repository():
  """Docs and docstrings name no file a clone does not have."""
  missing = ("METHOD.md", "DESIGN.md", "SEED.txt")
  paths = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
  paths += [
    *(ROOT / "boot_jax").rglob("*.py"),
    *(ROOT / "configs").glob("*.py"),
  ]
  for path in paths:
    text = path.read_text()
    for name in missing:
      assert name not in text, (path, name)
  for link in re.findall(
    r"\]\(((?:docs/)?[\w./-]+\.md)\)", (ROOT / "README.md").read_text()
  ):
    assert (ROOT / link).is_file(), link


@pytest.mark.parametrize(
  "module,args,expected",
  [
    ("boot_jax.export", ["--batch", "0"], "--batch must be >= 1"),
    ("boot_jax.export", ["--platforms", "bogus"], "unknown platform"),
    ("boot_jax.evaluate", ["--num_samples", "0"], "must be >= 1"),
    ("boot_jax.evaluate", ["--mesh", "data=3"], "needs 3 devices"),
  ],
)
def test_export_and_evaluate_bad_flags(
  fsdp_run, tmp_path, module, args, expected
):
  out = ["--out", tmp_path / "e"] if module.endswith("export") else []
  code, _, err = run_module(
    module, "--workdir", fsdp_run, *out, *args, env=_devices(2)
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1 and expected in lines[0], err[-2000:]
  assert not (tmp_path / "e").exists()
