"""Test setup: 8 fake CPU devices and a persistent compilation cache.

This module runs before any test module imports jax, so the XLA flag takes
effect for the whole session.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = os.environ.get(
  "BOOT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/boot_jax_test_jit")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run_module(module, *args, cwd=None, timeout=900, env=None):
  """Runs `python -m module args` and returns (returncode, stdout, stderr).

  The child inherits this session's 8 fake CPU devices.
  """
  import subprocess
  import sys

  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  proc = subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=full_env,
    timeout=timeout,
  )
  return proc.returncode, proc.stdout, proc.stderr


def error_lines(stderr: str) -> list[str]:
  """The `error: ...` lines of a CLI's stderr (absl may log other lines)."""
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def tree_hash(path) -> str:
  """A hash of every file's relative path and bytes under `path`."""
  import hashlib

  h = hashlib.sha256()
  for p in sorted(path.rglob("*")):
    if p.is_file():
      h.update(str(p.relative_to(path)).encode())
      h.update(p.read_bytes())
  return h.hexdigest()
