"""Shared by tests and benchmarks: tiny random folders written by the
reference libraries, and a child process's peak memory.

The folders need the test extra (diffusers, PyTorch); nothing of the
library imports this module. The parity tests load these folders
through our Flax teacher loader and compare with the PyTorch modules that
wrote them. Sizes are the smallest that
diffusers' Flax modules accept (GroupNorm over 32 groups needs channel
counts that are multiples of 32).
"""

import json
import string
import sys

# Runs `python -m <module> <args>` and prints the process's own peak
# resident memory at exit. VmHWM, not ru_maxrss: the latter keeps the
# peak of the process that forked this one across exec (a large parent
# reads as a large child).
_PEAK_RSS = """
import atexit, runpy, sys
def peak():
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      print("PEAK_RSS_KB", line.split()[1], file=sys.stderr)
atexit.register(peak)
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__")
"""


def peak_rss_argv(module: str, *args) -> list[str]:
  """The argv that runs `python -m module args` and reports its peak RSS
  on stderr (read it back with `peak_rss_mib`); Linux only."""
  return [sys.executable, "-c", _PEAK_RSS, module, *map(str, args)]


def peak_rss_mib(stderr: str) -> float | None:
  """The peak RSS in MiB that a `peak_rss_argv` process printed (None if
  it died before printing it)."""
  if "PEAK_RSS_KB" not in stderr:
    return None
  return int(stderr.split("PEAK_RSS_KB")[-1].split()[0]) / 1024


def tokenizer_files(directory) -> None:
  """A CLIP BPE vocabulary of single letters: any lowercase prompt works."""
  letters = list(string.ascii_lowercase)
  vocab = letters + [c + "</w>" for c in letters]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "vocab.json").write_text(
    json.dumps({tok: i for i, tok in enumerate(vocab)})
  )
  (directory / "merges.txt").write_text("#version: 0.2\n")


def _tiny_vae(levels: int, **fields):
  """diffusers' AutoencoderKL, `levels` resolutions (factor 2^(levels-1))."""
  from diffusers import AutoencoderKL

  return AutoencoderKL(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * levels,
    up_block_types=("UpDecoderBlock2D",) * levels,
    block_out_channels=(32, 64) if levels == 2 else (32,) * levels,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=16,
    **fields,
  )


def _perturb(*modules, scale: float = 0.05) -> None:
  """Adds Gaussian noise to every parameter of PyTorch `modules`."""
  import torch

  with torch.no_grad():
    for module in modules:
      for p in module.parameters():
        p.add_(scale * torch.randn_like(p))


def make_folder(
  path,
  prediction: str = "epsilon",
  seed: int = 0,
  vae_levels: int = 2,
  heads: int = 8,
):
  """Writes a complete tiny SD folder; returns the PyTorch pipeline.

  `vae_levels` VAE resolutions downsample by 2^(levels - 1): 2 for the
  parity tests' small latents, 4 for Stable Diffusion's factor of 8.
  `heads` attention heads per layer (diffusers' `attention_head_dim`):
  8 heads of 4 features test the head split; at 512 px one head of 32
  is ~15x faster on a CPU (XLA's CPU dots with 4-wide contractions are
  slow) and closer to SD's own 40 to 64 features a head.
  """
  import torch
  from diffusers import (
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
  )
  from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

  torch.manual_seed(seed)
  sd2 = prediction == "v_prediction"
  unet = UNet2DConditionModel(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=heads,
    use_linear_projection=sd2,
    norm_num_groups=32,
  )
  vae = _tiny_vae(vae_levels)
  tok_dir = path / "_tok"
  tokenizer_files(tok_dir)
  tokenizer = CLIPTokenizer(
    str(tok_dir / "vocab.json"),
    str(tok_dir / "merges.txt"),
    model_max_length=77,
  )
  text = CLIPTextModel(CLIPTextConfig(**_tiny_clip_text(tokenizer)))
  # Random, not default, weights everywhere (default inits zero some
  # layers, which would hide mistakes in converting them).
  _perturb(unet, vae, text)
  scheduler = DDIMScheduler(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type=prediction,
  )
  pipe = StableDiffusionPipeline(
    vae=vae,
    text_encoder=text,
    tokenizer=tokenizer,
    unet=unet,
    scheduler=scheduler,
    safety_checker=None,
    feature_extractor=None,
    requires_safety_checker=False,
  )
  pipe.save_pretrained(str(path / "sd"), safe_serialization=True)
  return pipe


def make_xl_folder(path, seed: int = 0, vae_levels: int = 2, heads: int = 2):
  """Writes a complete tiny SDXL folder (`path`/sdxl); returns the PyTorch
  `StableDiffusionXLPipeline`.

  SDXL's layout in small: a first level without attention, deeper
  transformers below (`transformer_layers_per_block`), linear
  projections, `text_time` micro-conditioning, a `CLIPTextModel` and a
  `CLIPTextModelWithProjection` (widths 32 and 32, so cross-attention
  reads 64; pooled width 24), a second tokenizer that pads with "!" as
  SDXL's does, and the folder's scheduler as SDXL ships it: an
  `EulerDiscreteScheduler` config (its DDIM is `DDIMScheduler.from_config`
  of it). `heads`: attention heads per level (diffusers'
  `attention_head_dim`).
  """
  import torch
  from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
  )
  from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
  )

  torch.manual_seed(seed)
  pooled, time_dim = 24, 8
  unet = UNet2DConditionModel(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    cross_attention_dim=64,
    attention_head_dim=heads,
    use_linear_projection=True,
    norm_num_groups=32,
    addition_embed_type="text_time",
    addition_time_embed_dim=time_dim,
    projection_class_embeddings_input_dim=pooled + 6 * time_dim,
  )
  vae = _tiny_vae(vae_levels, scaling_factor=0.13025)  # SDXL's VAE
  tok_dir = path / "_tok"
  tokenizer_files(tok_dir)
  tokenizer = CLIPTokenizer(
    str(tok_dir / "vocab.json"),
    str(tok_dir / "merges.txt"),
    model_max_length=77,
  )
  tokenizer_2 = CLIPTokenizer(
    str(tok_dir / "vocab.json"),
    str(tok_dir / "merges.txt"),
    model_max_length=77,
    pad_token="a",  # SDXL's second tokenizer pads with another token
  )
  text = CLIPTextModel(CLIPTextConfig(**_tiny_clip_text(tokenizer)))
  text_2 = CLIPTextModelWithProjection(
    CLIPTextConfig(**_tiny_clip_text(tokenizer), projection_dim=pooled)
  )
  _perturb(unet, vae, text, text_2)
  scheduler = EulerDiscreteScheduler(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
  )
  scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False)
  pipe = StableDiffusionXLPipeline(
    vae=vae,
    text_encoder=text,
    text_encoder_2=text_2,
    tokenizer=tokenizer,
    tokenizer_2=tokenizer_2,
    unet=unet,
    scheduler=scheduler,
  )
  pipe.save_pretrained(str(path / "sdxl"), safe_serialization=True)
  return pipe


SENTENCES = (
  "a red square on a blue background",
  "a photo of a cat sitting on a mat",
  "an oil painting of the sea at night",
  "two dogs playing in the snow",
  "a green circle and a yellow triangle",
  "the quick brown fox jumps over the lazy dog",
)


def sentencepiece_model(directory) -> str:
  """Trains a 48-piece unigram model on `SENTENCES` (T5's special ids: pad
  0, eos 1, unk 2); returns the spiece.model path."""
  import sentencepiece as spm

  directory.mkdir(parents=True, exist_ok=True)
  corpus = directory / "corpus.txt"
  corpus.write_text("\n".join(SENTENCES * 4) + "\n")
  prefix = directory / "spiece"
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(prefix),
    vocab_size=48,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    minloglevel=2,
  )
  corpus.unlink()
  return str(prefix) + ".model"


# The tiny SD3 folder's widths: CLIP 16 + 16 (pooled 12 + 12), T5 and the
# transformer's text width 40, transformer 2 heads of 8.
SD3_TEXT_WIDTH = 40


def make_sd3_folder(path, seed: int = 0, t5: bool = True, shift: float = 3.0):
  """Writes a complete tiny Stable Diffusion 3.5 folder (`path`/sd3);
  returns the PyTorch `StableDiffusion3Pipeline`.

  SD 3.5 Medium's kind in small: an `SD3Transformer2DModel` with RMS q/k
  norms and a second attention in its first block, a 16-channel VAE
  without quant convolutions and with a shift factor, two
  `CLIPTextModelWithProjection`s (the second tokenizer pads with another
  token), a T5 encoder (`t5`; without it the pipeline conditions on
  zeros) and a `FlowMatchEulerDiscreteScheduler` with `shift`. Every
  weight of the transformer, the VAE and the CLIPs is redrawn at random
  (fan-in scaled), so no zero-initialised part hides a wrong path; T5's
  are its initialisation, perturbed.
  """
  import shutil

  import torch
  from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
  )
  from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
  )

  torch.manual_seed(seed)
  transformer = SD3Transformer2DModel(
    sample_size=8,
    patch_size=2,
    in_channels=16,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=SD3_TEXT_WIDTH,
    caption_projection_dim=16,
    pooled_projection_dim=24,
    out_channels=16,
    pos_embed_max_size=12,
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
  )
  vae = AutoencoderKL(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 32),
    latent_channels=16,
    norm_num_groups=32,
    sample_size=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=1.5305,
    shift_factor=0.0609,
  )
  tok_dir = path / "_tok"
  tokenizer_files(tok_dir)
  tokenizer = CLIPTokenizer(
    str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
    model_max_length=77,
  )  # fmt: skip
  tokenizer_2 = CLIPTokenizer(
    str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
    model_max_length=77, pad_token="a",
  )  # fmt: skip
  clip = dict(_tiny_clip_text(tokenizer), hidden_size=16, projection_dim=12)
  clip["intermediate_size"] = 32
  text = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
  text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
  modules = [transformer, vae, text, text_2]
  t5_parts = dict(text_encoder_3=None, tokenizer_3=None)
  if t5:
    spm_dir = path / "_t5tok"
    spm_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(sentencepiece_model(path / "_spm"), spm_dir / "spiece.model")
    tokenizer_3 = T5Tokenizer.from_pretrained(
      str(spm_dir), extra_ids=0, legacy=False
    )
    text_3 = T5EncoderModel(
      T5Config(
        vocab_size=len(tokenizer_3), d_model=SD3_TEXT_WIDTH, d_kv=8, d_ff=32,
        num_layers=2, num_heads=2, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
      )
    )  # fmt: skip
    # T5 as the IF folders have it (its default initialisation, perturbed):
    # its attention is unscaled, and fan-in scaled weights would make its
    # softmax needlessly sharp.
    _perturb(text_3)
    text_3.eval()
    t5_parts = dict(text_encoder_3=text_3, tokenizer_3=tokenizer_3)
  with torch.no_grad():
    for module in modules:
      for name, p in module.named_parameters():
        fan_in = int(torch.tensor(p.shape[1:]).prod()) if p.ndim > 1 else 0
        if fan_in:
          p.copy_(torch.randn_like(p) * fan_in**-0.5)
        else:
          base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
          p.copy_(base + 0.1 * torch.randn_like(p))
      module.eval()
  scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
  pipe = StableDiffusion3Pipeline(
    transformer=transformer,
    scheduler=scheduler,
    vae=vae,
    text_encoder=text,
    tokenizer=tokenizer,
    text_encoder_2=text_2,
    tokenizer_2=tokenizer_2,
    **t5_parts,
  )
  pipe.save_pretrained(str(path / "sd3"), safe_serialization=True)
  return pipe


WORDS = (
  "a the of red blue green cat dog square circle house tree sky big small "
  "photo painting city river night"
).split()


def prompt_parquet(path, rows: int, seed: int = 0):
  """A Parquet prompt file of `rows` random 8-word prompts, ~5% of them
  repeated (columns `id`, `prompt`). Returns the distinct prompts in order
  of first occurrence, found independently of `boot_jax.prompts` (a
  unique over the word-index rows)."""
  import numpy as np
  import pyarrow as pa
  import pyarrow.parquet as pq

  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(WORDS), size=(rows, 8)).astype(np.int8)
  copies = rows // 20
  idx[rng.integers(0, rows, copies)] = idx[rng.integers(0, rows, copies)]
  words = np.array(WORDS)
  prompts = [" ".join(r) for r in words[idx].tolist()]
  table = pa.table({"id": np.arange(rows), "prompt": prompts})
  pq.write_table(table, str(path), row_group_size=100_000)
  _, first = np.unique(idx, axis=0, return_index=True)
  return [prompts[i] for i in np.sort(first)]


def _tiny_clip_text(tokenizer) -> dict:
  """A two-layer CLIP text encoder of width 32 over the tiny vocabulary."""
  return dict(
    vocab_size=len(tokenizer),
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id,
    pad_token_id=tokenizer.eos_token_id,
  )


def clip_folder(path, seed: int = 0):
  """Writes a tiny random CLIP folder (safetensors, tokenizer) with
  PyTorch code; returns the PyTorch `CLIPModel`."""
  import torch
  from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

  tok_dir = path / "_tok"
  tokenizer_files(tok_dir)
  tokenizer = CLIPTokenizer(
    str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt")
  )
  torch.manual_seed(seed)
  config = CLIPConfig(
    text_config=_tiny_clip_text(tokenizer),
    vision_config=dict(
      hidden_size=32,
      intermediate_size=37,
      num_attention_heads=4,
      num_hidden_layers=2,
      image_size=32,
      patch_size=8,
    ),
    projection_dim=16,
  )
  model = CLIPModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(str(path), safe_serialization=True)
  tokenizer.save_pretrained(str(path))
  return model


def random_inception_weights(path, seed: int = 0) -> None:
  """A safetensors file of the FID Inception's PyTorch keys with random
  weights (unit batch norms), for tests of the code around the network."""
  import numpy as np
  from flax import traverse_util
  from safetensors.numpy import save_file

  from boot_jax.evaluation import inception

  rng = np.random.default_rng(seed)
  names = {"bn_scale": "weight", "bn_bias": "bias"}
  names |= {"bn_mean": "running_mean", "bn_var": "running_var"}
  arrays = {}
  flat = traverse_util.flatten_dict(inception._abstract())  # noqa: SLF001
  for key, leaf in flat.items():
    if key[-1] == "kernel":
      kh, kw, cin, cout = leaf.shape
      w = rng.standard_normal((cout, cin, kh, kw)) * np.sqrt(
        2 / (kh * kw * cin)
      )
      arrays[".".join((*key[:-1], "weight"))] = w.astype("f4")
    else:
      value = np.ones(leaf.shape) if key[-1] in ("bn_scale", "bn_var") else 0
      arrays[".".join((*key[:-1], "bn", names[key[-1]]))] = np.zeros(
        leaf.shape, "f4"
      ) + np.asarray(value, "f4")
  save_file(arrays, str(path))
