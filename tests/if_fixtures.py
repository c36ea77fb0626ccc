"""Tiny random DeepFloyd IF stage I folders, written by PyTorch code.

The UNet is diffusers' `UNet2DConditionModel` with IF's block types and
config keys; the text encoder transformers' `T5EncoderModel` (v1.1: gated
GELU); the tokenizer a sentencepiece model trained here on a few lines
(T5's special ids: pad 0, eos 1, unk 2); the scheduler IF's DDPM config.
`IFPipeline.save_pretrained` writes the folder. Every weight is rounded to
float16 first, so the fp32, sharded and fp16-variant files of one folder
hold exactly the same numbers.
"""

import json
import shutil

# The sentences the tokenizer is trained on (the IF tests prompt with them).
from boot_jax.testing import SENTENCES as SENTENCES
from boot_jax.testing import sentencepiece_model

T5_WIDTH = 32


def unet_config(resolution: int = 64) -> dict:
  """IF's keys at tiny widths: three levels (16, 8, 4 at 16 px), the
  first with resnet resampling only, the others with added-KV attention."""
  return dict(
    sample_size=resolution,
    in_channels=3,
    out_channels=6,
    block_out_channels=(32, 32, 64),
    layers_per_block=1,
    down_block_types=(
      "ResnetDownsampleBlock2D",
      "SimpleCrossAttnDownBlock2D",
      "SimpleCrossAttnDownBlock2D",
    ),
    up_block_types=(
      "SimpleCrossAttnUpBlock2D",
      "SimpleCrossAttnUpBlock2D",
      "ResnetUpsampleBlock2D",
    ),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    attention_head_dim=16,  # IF: the head size (64 in IF-I)
    cross_attention_dim=32,
    encoder_hid_dim=T5_WIDTH,
    encoder_hid_dim_type="text_proj",
    addition_embed_type="text",
    addition_embed_type_num_heads=4,
    cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
    time_embedding_act_fn="gelu",
    norm_eps=1e-5,
  )


def make_folder(
  path, seed: int = 0, resolution: int = 64, eps_scale: float = 1.0
):
  """Writes a complete tiny IF folder; returns the PyTorch pipeline.

  `eps_scale` multiplies the output convolution: at PyTorch's own
  initialisation (1.0) guided DDIM with a random UNet is chaotic (float32
  differences of 1e-5 grow about 4x per step, as they do between two
  float64 runs), so DDIM parity uses 0.03, where the trajectory depends
  smoothly on the network.
  """
  import torch
  from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
  from transformers import T5Config, T5EncoderModel, T5Tokenizer

  torch.manual_seed(seed)
  unet = UNet2DConditionModel(**unet_config(resolution))
  spiece = sentencepiece_model(path.parent / f"{path.name}_spm")
  # From a folder holding spiece.model, as IF's folders do: transformers 4
  # and 5 both read that (5's constructor no longer takes the file).
  tok_dir = path.parent / f"{path.name}_tok"
  tok_dir.mkdir(exist_ok=True)
  shutil.copy(spiece, tok_dir / "spiece.model")
  tokenizer = T5Tokenizer.from_pretrained(
    str(tok_dir), extra_ids=0, legacy=False
  )
  text = T5EncoderModel(
    T5Config(
      vocab_size=len(tokenizer),
      d_model=T5_WIDTH,
      d_kv=8,
      d_ff=64,
      num_layers=2,
      num_heads=4,
      relative_attention_num_buckets=8,
      feed_forward_proj="gated-gelu",
      dropout_rate=0.0,
    )
  )
  with torch.no_grad():
    for module in (unet, text):
      for p in module.parameters():
        # Random, not default, weights everywhere (default norms are 1 and
        # 0, which would hide a mistake in converting them).
        p.add_(0.05 * torch.randn_like(p))
    unet.conv_out.weight.mul_(eps_scale)
    unet.conv_out.bias.mul_(eps_scale)
    for module in (unet, text):
      for p in module.parameters():
        p.copy_(p.half().float())  # exactly representable in float16
  unet.eval()
  text.eval()
  # IF's own scheduler config (scripts/convert_if.py in diffusers).
  scheduler = DDPMScheduler(
    variance_type="learned_range",
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    thresholding=True,
    dynamic_thresholding_ratio=0.95,
    sample_max_value=1.5,
  )
  pipe = IFPipeline(
    tokenizer=tokenizer,
    text_encoder=text,
    unet=unet,
    scheduler=scheduler,
    safety_checker=None,
    feature_extractor=None,
    watermarker=None,
    requires_safety_checker=False,
  )
  pipe.save_pretrained(str(path), safe_serialization=True)
  return pipe


def sharded_copy(pipe, path, fp16: bool) -> None:
  """The same pipeline saved again with sharded weights (an index json
  naming the shards), in float32 or as the fp16 variant."""
  import copy

  pipe.save_pretrained(str(path), safe_serialization=True)
  for part in ("unet", "text_encoder"):
    for f in (path / part).glob("*.safetensors"):
      f.unlink()
    module = copy.deepcopy(getattr(pipe, part))
    module.to(torch_dtype(fp16)).save_pretrained(
      str(path / part),
      safe_serialization=True,
      variant="fp16" if fp16 else None,
      max_shard_size="400KB" if part == "unet" else "40KB",
    )


def torch_dtype(fp16: bool):
  import torch

  return torch.float16 if fp16 else torch.float32


def read_config(path) -> dict:
  return json.loads((path / "unet" / "config.json").read_text())
