r"""BOOT on Stable Diffusion 1.x (epsilon prediction, 512 px), prompts only.

Expects a local diffusers folder (unet/, vae/, text_encoder/, tokenizer/,
scheduler/; Flax msgpack or PyTorch safetensors weights), e.g. the files
of runwayml/stable-diffusion-v1-5 copied to /models/sd15, and a prompt
file (.txt one a line, .jsonl/.csv with a `prompt` column, or DiffusionDB's
metadata .parquet):

    python -m boot_jax.train --config configs/sd15.py --workdir /tmp/boot_sd15 \
      --config.teacher.path=/models/sd15 \
      --config.teacher.prompts=/data/prompts.txt

Then `python -m boot_jax.sample --workdir /tmp/boot_sd15 --out s.npz
--prompt "a red square"`. Guidance w = 7.5 inside the teacher; bf16
compute, rematerialised UNet; see docs/text_to_image.md for meshes.
"""

from boot_jax.config import recipes


def get_config(arg: str = ""):
  del arg
  return recipes.sd_boot_config(resolution=512, prediction="eps")
