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
