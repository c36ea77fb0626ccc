"""boot_jax: data-free distillation of diffusion models with BOOT."""

__version__ = "0.1.0"
