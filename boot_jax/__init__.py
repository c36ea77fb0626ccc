"""boot_jax: data-free distillation of diffusion models with BOOT.

The Python API (boot_jax/api.py):

    import boot_jax

    run = boot_jax.load("/tmp/boot_digits")
    images = run.sample(16, seed=0)  # what `python -m boot_jax.sample` writes
"""

__version__ = "0.1.0"


def load(workdir: str, mesh: str | None = None, dtype: str = "float32"):
  """A trained work directory for sampling and export (`api.Run`)."""
  # Imported on first use: every `import boot_jax.<module>` runs this file,
  # and the programs should not pay for jax's and the networks' imports
  # that they do not need.
  from boot_jax import api  # noqa: PLC0415

  return api.load(workdir, mesh, dtype)
