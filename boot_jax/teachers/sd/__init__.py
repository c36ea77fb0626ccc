"""The Stable Diffusion teacher family: folder loading (`loading`), the
teacher (`sd_teacher`, over our own networks in `boot_jax/models/`) and
the student's export as a diffusers folder (`export`, `one_step`).
"""
