r"""BOOT on DeepFloyd IF-I-XL (stage I, 64x64 pixels, T5 text), prompts only.

Expects a local diffusers folder of DeepFloyd/IF-I-XL-v1.0 (unet/,
text_encoder/, tokenizer/, scheduler/; safetensors weights, single or
sharded, fp32 or the fp16 variant), e.g. copied to /models/if_i_xl, and a
prompt file (.txt one a line, .jsonl/.csv with a `prompt` column, or
DiffusionDB's metadata .parquet):

    python -m boot_jax.train --config configs/if_i_xl.py \
      --workdir /tmp/boot_if_i_xl --config.teacher.path=/models/if_i_xl \
      --config.teacher.prompts=/data/prompts.txt

Then `python -m boot_jax.sample --workdir /tmp/boot_if_i_xl --out s.npz
--prompt "a red square"` writes 64x64 images. Guidance w = 7 inside the
teacher; bf16 compute, rematerialised UNet, FSDP over every device; see
docs/text_to_image.md for memory per device and meshes.
"""

from boot_jax.config import recipes


def get_config(arg: str = ""):
  del arg
  return recipes.if_boot_config("xl")
