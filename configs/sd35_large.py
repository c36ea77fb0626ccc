r"""BOOT on Stable Diffusion 3.5 Large (a 8.1B flow-matching MMDiT, 1024
px), prompts only.

Expects a local diffusers SD3 folder (transformer/, vae/, text_encoder/,
text_encoder_2/, text_encoder_3/, tokenizer/, tokenizer_2/, tokenizer_3/,
scheduler/; safetensors weights, full or the fp16 variant), e.g. the
files of stabilityai/stable-diffusion-3.5-large copied to /models/sd35,
and a prompt file (.txt one a line, .jsonl/.csv with a `prompt` column,
or DiffusionDB's metadata .parquet):

    python -m boot_jax.train --config configs/sd35_large.py \
      --workdir /tmp/boot_sd35 --config.teacher.path=/models/sd35 \
      --config.teacher.prompts=/data/prompts.txt

Then `python -m boot_jax.sample --workdir /tmp/boot_sd35 --out s.npz
--prompt "a red square"`. The teacher is the rectified flow's Euler
sampler at the folder's shift, guided with w = 3.5 (the model card's);
`--config.teacher.t5=false` conditions on zeros in T5's place (as the
pipeline does without it). Global batch 32, bf16 compute,
rematerialised blocks, the student over every device (fsdp); see
docs/text_to_image.md.
"""

from boot_jax.config import recipes


def get_config(arg: str = ""):
  del arg
  return recipes.sd3_boot_config("large")
