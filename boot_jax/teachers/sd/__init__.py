"""The Stable Diffusion teacher family: folder loading (`loading`), the
teacher (`sd_teacher`), diffusers' Flax modules (`diffusers_flax`) and
the student's export as a diffusers folder (`export`, `one_step`).
"""
