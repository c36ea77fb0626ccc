r"""BOOT on Stable Diffusion 2.x (v prediction, 768 px), prompts only.

Expects a local diffusers folder of stabilityai/stable-diffusion-2-1
(unet/, vae/, text_encoder/, tokenizer/, scheduler/) and a prompt file:

    python -m boot_jax.train --config configs/sd21.py --workdir /tmp/boot_sd21 \
      --config.teacher.path=/models/sd21 \
      --config.teacher.prompts=/data/prompts.txt
"""

from boot_jax.config import recipes


def get_config(arg: str = ""):
  del arg
  return recipes.sd_boot_config(resolution=768, prediction="v")
