r"""BOOT on Stable Diffusion XL base (epsilon prediction, 1024 px), prompts
only.

Expects a local diffusers SDXL folder (unet/, vae/, text_encoder/,
text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/; safetensors
weights, full or the fp16 variant), e.g. the files of
stabilityai/stable-diffusion-xl-base-1.0 copied to /models/sdxl, and a
prompt file (.txt one a line, .jsonl/.csv with a `prompt` column, or
DiffusionDB's metadata .parquet):

    python -m boot_jax.train --config configs/sdxl.py --workdir /tmp/boot_sdxl \
      --config.teacher.path=/models/sdxl \
      --config.teacher.prompts=/data/prompts.txt

Then `python -m boot_jax.sample --workdir /tmp/boot_sdxl --out s.npz
--prompt "a red square"`. Guidance w = 5 inside the teacher (the
pipeline's default); micro-conditioning `teacher.original_size` (None: the
resolution) and `teacher.crop_top_left`; bf16 compute, rematerialised
UNet, the student over every device (fsdp); see docs/text_to_image.md.
"""

from boot_jax.config import recipes


def get_config(arg: str = ""):
  del arg
  return recipes.sdxl_boot_config(resolution=1024)
