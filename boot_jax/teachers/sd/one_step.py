"""One-step sampling with a BOOT student exported by boot_jax.

Self-contained: torch, diffusers and transformers (and safetensors, which
both depend on, for a guidance-conditioned student). From this folder:

    import one_step
    images = one_step.one_step(".", ["a red square"], noise)

`noise` is the student's input: latents [B, 4, h, w], standard normal. The
images are [B, 3, 8h, 8w] in [-1, 1]. The UNet here is the student: it is
run once, at the clean end of the trajectory, not in a scheduler loop.
"""

import json
import os

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (
  CLIPTextModel,
  CLIPTextModelWithProjection,
  CLIPTokenizer,
)

_LOADED = {}


def load(folder, device="cpu"):
  """The folder's networks and settings (cached per folder and device)."""
  key = (os.path.abspath(folder), str(device))
  if key in _LOADED:
    return _LOADED[key]
  with open(os.path.join(folder, "boot_student.json"), encoding="utf-8") as f:
    meta = json.load(f)

  def part(cls, name):
    path = os.path.join(folder, name)
    return cls.from_pretrained(path, use_safetensors=True).to(device).eval()

  parts = dict(
    meta=meta,
    unet=part(UNet2DConditionModel, "unet"),
    vae=part(AutoencoderKL, "vae"),
    text_encoder=part(CLIPTextModel, "text_encoder"),
    tokenizer=CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
    guidance=None,
  )
  if meta.get("micro_conditioning"):  # SDXL: the second encoder too
    parts["text_encoder_2"] = part(
      CLIPTextModelWithProjection, "text_encoder_2"
    )
    parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(
      os.path.join(folder, "tokenizer_2")
    )
  if meta.get("guidance"):
    from safetensors.torch import load_file

    weights = load_file(os.path.join(folder, meta["guidance"]["file"]))
    parts["guidance"] = {k: v.to(device) for k, v in weights.items()}
  _LOADED[key] = parts
  return parts


def clip_words(text, max_tokens):
  """The first `max_tokens + 1` words of `text`, each cut at 1000
  characters (boot_jax's `sd.clip_words`: no huge prompt is tokenised)."""
  words = str(text).split(maxsplit=max_tokens + 1)[: max_tokens + 1]
  return " ".join(w[:1000] for w in words)


def _token_ids(tok, prompts, device):
  length = tok.model_max_length
  prompts = [clip_words(p, length) for p in prompts]
  ids = tok(
    list(prompts), padding="max_length", max_length=length, truncation=False
  ).input_ids
  ids = [i[: length - 1] + i[-1:] if len(i) > length else i for i in ids]
  return torch.tensor(ids, dtype=torch.long, device=device)


def encode_prompts(parts, prompts, device="cpu"):
  """The text condition, as boot_jax computes it: padded to the
  tokenizer's length (77), every token attended, over-long prompts cut to
  their first tokens and the end token. SD: CLIP's last hidden state.
  SDXL: both encoders' penultimate hidden states, concatenated, and the
  second's projected pooled state, `(text, pooled)`."""
  ids = _token_ids(parts["tokenizer"], prompts, device)
  if "text_encoder_2" not in parts:
    return parts["text_encoder"](input_ids=ids)[0]
  ids_2 = _token_ids(parts["tokenizer_2"], prompts, device)
  one = parts["text_encoder"](input_ids=ids, output_hidden_states=True)
  two = parts["text_encoder_2"](input_ids=ids_2, output_hidden_states=True)
  text = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1)
  return text, two.text_embeds


def _guidance_embedding(parts, w, batch, device):
  """boot_jax's GuidanceEmbedding of w: sinusoids, Dense, SiLU, Dense."""
  g = parts["meta"]["guidance"]
  weights = parts["guidance"]
  w = torch.as_tensor(w, dtype=torch.float32, device=device)
  w = torch.broadcast_to(w, (batch,)) * torch.tensor(g["scale"])
  half = g["features"] // 2
  log_period = torch.log(torch.tensor(g["max_period"], dtype=torch.float64))
  freqs = torch.exp(
    -log_period.item() * torch.arange(half, device=device) / half
  )
  args = w[:, None] * freqs[None]
  emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
  if g["features"] % 2:
    emb = torch.nn.functional.pad(emb, (0, 1))
  emb = torch.nn.functional.linear(
    emb, weights["linear_1.weight"], weights["linear_1.bias"]
  )
  emb = torch.nn.functional.silu(emb)
  return torch.nn.functional.linear(
    emb, weights["linear_2.weight"], weights["linear_2.bias"]
  )


def _to_x0(out, x, alpha, sigma, prediction):
  if prediction == "eps":
    return (x - sigma * out) / alpha
  if prediction == "v":
    return alpha * x - sigma * out
  return out


@torch.inference_mode()
def one_step(folder, prompts, noise, device="cpu", guidance=None):
  """Images [B, 3, H, W] in [-1, 1] from latents `noise` [B, 4, h, w].

  Args:
    folder: this exported folder.
    prompts: B prompts.
    noise: the student's input latents (a tensor or array), NCHW.
    device: where to run.
    guidance: the guidance scale w (a number or B numbers) of a
      guidance-conditioned student; must be None for any other student.
  """
  parts = load(folder, device)
  meta = parts["meta"]
  noise = torch.as_tensor(noise, dtype=torch.float32).to(device)
  if noise.ndim != 4 or noise.shape[1] != parts["unet"].config.in_channels:
    raise ValueError(
      f"noise must be [B, {parts['unet'].config.in_channels}, h, w], "
      f"got {tuple(noise.shape)}"
    )
  batch = noise.shape[0]
  if len(prompts) != batch:
    raise ValueError(f"{len(prompts)} prompts for {batch} noise latents")
  if (guidance is None) != (parts["guidance"] is None):
    raise ValueError(
      "this student is guidance-conditioned: give a guidance"
      if guidance is None
      else "this student is not guidance-conditioned: guidance must be None"
    )

  def f32(value):
    return torch.tensor(value, dtype=torch.float32, device=device)

  text = encode_prompts(parts, prompts, device)
  kwargs = {}
  if meta.get("micro_conditioning"):
    text, pooled = text
    ids = f32(meta["micro_conditioning"]["time_ids"])
    kwargs["added_cond_kwargs"] = dict(
      text_embeds=pooled, time_ids=ids.expand(batch, -1)
    )
  t = torch.full((batch,), float(meta["t_clean"]), device=device)
  hook = None
  if guidance is not None:
    w_emb = _guidance_embedding(parts, guidance, batch, device)
    hook = parts["unet"].time_embedding.register_forward_hook(
      lambda module, args, out: out + w_emb.to(out.dtype)
    )
  try:
    out = parts["unet"](noise, t, encoder_hidden_states=text, **kwargs).sample
  finally:
    if hook is not None:
      hook.remove()
  if meta["parameterization"] == "teacher":
    out = _to_x0(
      out,
      noise,
      f32(meta["alpha_max"]),
      f32(meta["sigma_max"]),
      meta["prediction"],
    )
  if meta["space"] == "x":
    x = out
  else:
    x = f32(meta["alpha_clean"]) * out + f32(meta["sigma_clean"]) * noise
  z = x / f32(meta["vae_scaling_factor"])
  images = parts["vae"].decode(z).sample
  return images.clamp(-1.0, 1.0)
