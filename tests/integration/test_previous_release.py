"""Work directories and exports of the previous release keep working.

tests/data/previous_release/ holds a mixture run, its samples and its
export, all made by the release before the package was split into
subpackages (its README.md gives the commands). Today's programs must
sample it as that release did, run its export, export it again, and
resume its training. The samplers are the same XLA programs: the noise is
equal bit for bit everywhere, the images bit for bit on the machine kind
the files were made on and within 1e-6 on other CPUs
(conftest.assert_release_samples says why); the export's artifact is
compared within 1e-6, as tests/integration/test_inference.py does, since
it is another program.
"""

import pathlib
import shutil

import numpy as np
import pytest
from conftest import (
  assert_release_samples,
  run_export,
  run_module,
  run_sample,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "previous_release"
GMM = str(ROOT / "configs" / "gmm.py")
# The run's own overrides (README.md there): the config must match.
OVERRIDES = (
  "--config.train.batch_size=64",
  "--config.train.keep_checkpoints=1",
  "--config.student.model.width=32",
  "--config.student.model.depth=2",
  "--config.eval.final=false",
)


@pytest.fixture
def old_run(tmp_path):
  work = tmp_path / "w"
  shutil.copytree(DATA / "w", work)
  return work


@pytest.mark.parametrize(
  "sampler,extra", [("student", ()), ("teacher", ("--steps", "4"))]
)
def test_samples_as_that_release_did(old_run, tmp_path, sampler, extra):
  out = tmp_path / "s.npz"
  code, _, err = run_sample(
    old_run, out, "--num", "16", "--seed", "0", "--sampler", sampler, *extra
  )
  assert code == 0, err[-3000:]
  assert_release_samples(np.load(out), np.load(DATA / f"{sampler}.npz"))


def test_its_export_runs_and_exports_again(old_run, tmp_path):
  want = np.load(DATA / "student.npz")
  np.save(tmp_path / "eps.npy", want["noise"])
  old = run_export(DATA / "export", [tmp_path / "eps.npy"], tmp_path / "o.npy")
  assert float(np.max(np.abs(old - want["images"]))) <= 1e-6
  out = tmp_path / "export"
  code, _, err = run_module(
    "boot_jax.export", "--workdir", old_run, "--out", out, "--platforms", "cpu"
  )
  assert code == 0, err[-3000:]
  new = run_export(out, [tmp_path / "eps.npy"], tmp_path / "n.npy")
  assert float(np.max(np.abs(new - old))) <= 1e-6


def test_its_training_resumes(old_run):
  code, out, err = run_module(
    "boot_jax.train",
    "--config",
    GMM,
    "--config.train.steps=6",
    *OVERRIDES,
    "--workdir",
    old_run,
  )
  assert code == 0, err[-3000:]
  assert "resuming from the checkpoint of step 4" in out
  assert (old_run / "checkpoints" / "6").is_dir()
