"""Reference packages that live in a folder of their own (README).

pytorch-fid and torch-fidelity need torchvision, whose PyPI wheel is built
for CUDA torch: its compiled operators do not load with the CPU torch, and
its import then fails registering fake kernels for them (transformers,
seeing torchvision installed, would fail the same way in every other
test, so it is never installed beside them). `.ci/run` installs the three
with `--no-deps` into `VENDOR`; scripts run here in a clean process with
that folder on their path and that one registration module stubbed out
(the networks and metrics used are plain PyTorch and numpy).
"""

import os
import subprocess
import sys

import pytest

VENDOR = os.environ.get(
  "BOOT_JAX_TEST_VENDOR",
  os.path.expanduser("~/.cache/boot_jax/test_vendor"),
)
INSTALL = (
  "pip install --no-deps --target {vendor} torchvision==0.28.0 "
  "pytorch-fid==0.3.0 torch-fidelity==0.4.0 (README)"
)
_PREAMBLE = """
import sys, types
sys.modules["torchvision._meta_registrations"] = types.ModuleType("stub")
"""


def require(package: str) -> None:
  """Skips the test unless `package` is in the vendor folder."""
  if not os.path.isdir(os.path.join(VENDOR, package)):
    how = INSTALL.format(vendor=VENDOR)
    pytest.skip(f"{package} is not in {VENDOR}: {how}")


def run(script: str, *args) -> None:
  """Runs `script` with the vendor folder on its path; fails on error."""
  proc = subprocess.run(
    [sys.executable, "-c", _PREAMBLE + script, *map(str, args)],
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=VENDOR),
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
