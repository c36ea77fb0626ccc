r"""BOOT on Stable Diffusion 2.x base (epsilon prediction, 512 px).

Expects a local diffusers folder of stabilityai/stable-diffusion-2-1-base
(unet/, vae/, text_encoder/, tokenizer/, scheduler/) and a prompt file:

    python -m boot_jax.train --config configs/sd21_base.py \
      --workdir /tmp/boot_sd21_base --config.teacher.path=/models/sd21_base \
      --config.teacher.prompts=/data/prompts.txt
"""

from boot_jax.config import recipes


def get_config(arg: str = ""):
  del arg
  return recipes.sd_boot_config(resolution=512, prediction="eps")
