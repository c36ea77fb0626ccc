"""An export runs where only its README's packages are installed.

A fresh virtual environment (no system site packages, so no boot_jax and
none of its dependencies) gets exactly the packages the export's
README.md names (`pip install ...`, at this machine's versions of jax and
jaxlib, which must match the artifact's), then runs the README's own code
block in the export folder. Its images must equal boot_jax's one step on
the same noise within 1e-6 (another XLA program, as in
tests/integration/test_inference.py). pip reaches the package index (PyPI
or the machine's mirror); it downloads jax, jaxlib, numpy and
flatbuffers once per machine, then its cache serves them.
"""

import os
import pathlib
import re
import subprocess
import venv

import jax
import jaxlib
import numpy as np
import pytest
from conftest import run_module, run_sample, train_mixture

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  base = tmp_path_factory.mktemp("venv_export")
  work, out = base / "w", base / "export"
  train_mixture(work)
  code, _, err = run_module(
    "boot_jax.export", "--workdir", work, "--out", out, "--platforms", "cpu"
  )
  assert code == 0, err[-3000:]
  return work, out


def _pins(packages):
  """The README's packages, jax and jaxlib pinned to this machine's."""
  pins = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
  out = [f"{p}=={pins[p]}" if p in pins else p for p in packages]
  return out + ([f"jaxlib=={pins['jaxlib']}"] if "jax" in packages else [])


def test_the_readme_runs_in_a_fresh_environment(exported, tmp_path):
  work, out = exported
  readme = (out / "README.md").read_text()
  assert str(work.parent) not in readme  # no path of this machine
  (install,) = re.findall(r"pip install ([\w .-]+)\n", readme)
  packages = install.split()
  assert packages == ["jax", "numpy", "flatbuffers"]
  (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)

  env_dir = tmp_path / "env"
  venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
  python = env_dir / "bin" / "python"
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [str(python), "-m", "pip", "install", "--quiet", *_pins(packages)],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, "pip could not install:\n" + proc.stderr[-2000:]
  script = code + '\nnp.save("images.npy", images)\n'
  proc = subprocess.run(
    [str(python), "-c", script],
    capture_output=True,
    text=True,
    cwd=out,
    env=env,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  probe = subprocess.run(
    [str(python), "-c", "import boot_jax"],
    capture_output=True,
    cwd=out,
    env=env,
    check=False,
  )
  assert probe.returncode != 0  # the environment has no boot_jax
  got = np.load(out / "images.npy")

  # The same noise as the README's through boot_jax's own one step.
  rng = np.random.default_rng(0)
  eps = rng.standard_normal((16, 2)).astype(np.float32)
  np.save(tmp_path / "eps.npy", eps)
  code, _, err = run_sample(
    work, tmp_path / "s.npz", "--noise", tmp_path / "eps.npy"
  )
  assert code == 0, err[-3000:]
  want = np.load(tmp_path / "s.npz")["images"]
  assert got.shape == want.shape
  assert float(np.max(np.abs(got - want))) <= 1e-6
