"""The Python API gives what the programs give, bit for bit.

The work directory is the previous release's mixture run
(tests/data/previous_release/), so this also checks that the API reads
what an older boot_jax wrote.
"""

import pathlib
import shutil

import numpy as np
import pytest
from conftest import assert_release_samples, run_export, run_sample

import boot_jax

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "previous_release"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  out = tmp_path_factory.mktemp("api") / "w"
  shutil.copytree(DATA / "w", out)
  return out


def test_sample_equals_the_sample_program(work, tmp_path):
  run = boot_jax.load(str(work))
  assert run.step == 4 and "BOOT" in repr(run)
  got = run.sample(16, seed=0)
  out = tmp_path / "s.npz"
  code, _, err = run_sample(work, out, "--num", "16", "--seed", "0")
  assert code == 0, err[-3000:]
  want = np.load(out)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want["images"])
  # ...and what the previous release's program wrote.
  assert_release_samples(want, np.load(DATA / "student.npz"))
  # Given noise rows are used as they are.
  np.testing.assert_array_equal(run.sample(noise=want["noise"]), got)


def test_teacher_sample_and_export(work, tmp_path):
  run = boot_jax.load(str(work), mesh="data=1")
  teacher = run.teacher_sample(16, seed=0, steps=4)
  want = np.load(DATA / "teacher.npz")
  assert_release_samples(dict(want, images=teacher), want)
  files = run.export(str(tmp_path / "export"), platforms=["cpu"])
  assert "sampler.jax" in files
  eps = np.load(DATA / "student.npz")["noise"]
  np.save(tmp_path / "eps.npy", eps)
  got = run_export(
    tmp_path / "export", [tmp_path / "eps.npy"], tmp_path / "o.npy"
  )
  assert float(np.max(np.abs(got - run.sample(noise=eps)))) <= 1e-6


def test_bad_requests_are_value_errors(work):
  run = boot_jax.load(str(work))
  with pytest.raises(ValueError, match="num must be >= 1"):
    run.sample(0)
  with pytest.raises(ValueError, match="not class-conditional"):
    run.sample(4, label=3)
  with pytest.raises(ValueError, match="noise has shape"):
    run.sample(noise=np.zeros((4, 3), np.float32))
  with pytest.raises(ValueError, match="NaN or infinite"):
    run.sample(noise=np.full((4, 2), np.nan, np.float32))
