"""One-step sampling with a Stable Diffusion 3 BOOT student exported by
boot_jax.

Self-contained: torch, diffusers and transformers (and safetensors, which
both depend on, for a guidance-conditioned student). From this folder:

    import one_step
    images = one_step.one_step(".", ["a red square"], noise)

`noise` is the student's input: latents [B, 16, h, w], standard normal.
The images are [B, 3, 8h, 8w] in [-1, 1]. The transformer here is the
student: it is run once, at the clean end of the trajectory, not in a
scheduler loop. The prompts are encoded by the folder's
`StableDiffusion3Pipeline.encode_prompt` (zeros in T5's place when the
folder has no T5, as the student was distilled).
"""

import json
import os

import torch
from diffusers import StableDiffusion3Pipeline

_LOADED = {}


def load(folder, device="cpu"):
  """The folder's pipeline and settings (cached per folder and device)."""
  key = (os.path.abspath(folder), str(device))
  if key in _LOADED:
    return _LOADED[key]
  with open(os.path.join(folder, "boot_student.json"), encoding="utf-8") as f:
    meta = json.load(f)
  pipe = StableDiffusion3Pipeline.from_pretrained(folder).to(device)
  guidance = None
  if meta.get("guidance"):
    from safetensors.torch import load_file

    weights = load_file(os.path.join(folder, meta["guidance"]["file"]))
    guidance = {k: v.to(device) for k, v in weights.items()}
  _LOADED[key] = dict(meta=meta, pipe=pipe, guidance=guidance)
  return _LOADED[key]


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


@torch.inference_mode()
def one_step(folder, prompts, noise, device="cpu", guidance=None):
  """Images [B, 3, H, W] in [-1, 1] from latents `noise` [B, 16, h, w].

  Args:
    folder: this exported folder.
    prompts: B prompts.
    noise: the student's input latents (a tensor or array), NCHW.
    device: where to run.
    guidance: the guidance scale w (a number or B numbers) of a
      guidance-conditioned student; must be None for any other student.
  """
  parts = load(folder, device)
  meta, pipe = parts["meta"], parts["pipe"]
  channels = pipe.transformer.config.in_channels
  noise = torch.as_tensor(noise, dtype=torch.float32).to(device)
  if noise.ndim != 4 or noise.shape[1] != channels:
    raise ValueError(
      f"noise must be [B, {channels}, h, w], got {tuple(noise.shape)}"
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

  prompts = list(prompts)
  t5 = prompts if pipe.text_encoder_3 is not None else None
  text, _, pooled, _ = pipe.encode_prompt(
    prompts, prompts, t5, device=device, do_classifier_free_guidance=False
  )
  t = torch.full((batch,), float(meta["t_clean"]) * 1000.0, device=device)
  hook = None
  if guidance is not None:
    w_emb = _guidance_embedding(parts, guidance, batch, device)
    hook = pipe.transformer.time_text_embed.register_forward_hook(
      lambda module, args, out: out + w_emb.to(out.dtype)
    )
  try:
    out = pipe.transformer(
      hidden_states=noise,
      encoder_hidden_states=text,
      pooled_projections=pooled,
      timestep=t,
    ).sample
  finally:
    if hook is not None:
      hook.remove()
  if meta["parameterization"] == "teacher":
    # The output read as the flow velocity at the noise end.
    alpha, sigma = f32(meta["alpha_max"]), f32(meta["sigma_max"])
    out = (noise - sigma * out) / (alpha + sigma)
  if meta["space"] == "x":
    x = out
  else:
    x = f32(meta["alpha_clean"]) * out + f32(meta["sigma_clean"]) * noise
  z = x / f32(meta["vae_scaling_factor"]) + f32(meta["vae_shift_factor"])
  images = pipe.vae.decode(z).sample
  return images.clamp(-1.0, 1.0)
