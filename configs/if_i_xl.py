r"""BOOT on DeepFloyd IF-I-XL (stage I, 64x64 pixels, T5 text), prompts only.

As configs/if_i_m.py, which says what the folder and the prompt file hold,
with a local diffusers folder of DeepFloyd/IF-I-XL-v1.0:

    python -m boot_jax.train --config configs/if_i_xl.py \
      --workdir /tmp/boot_if_i_xl --config.teacher.path=/models/if_i_xl \
      --config.teacher.prompts=/data/prompts.txt
"""

from boot_jax.config import recipes


def get_config(arg: str = ""):
  del arg
  return recipes.if_boot_config("xl")
