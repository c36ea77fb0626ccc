"""Stable Diffusion 3 and 3.5 teachers from a local diffusers folder.

What is the family's own, and where it is here:
- the network: our MMDiT (`models.mmdit`) predicting the flow velocity
  `eps - x0` on `x_t = (1 - t) x0 + t eps`; the teacher's sampler is the
  Euler step of `FlowMatchEulerDiscreteScheduler` (the DDIM step on this
  path, docs/method.md) at its shifted times (`scheduler_config.json`'s
  `shift`);
- the text: two CLIP encoders and T5 (`loading.parts`), packed with the
  pooled CLIP embedding into one condition (`sd_teacher.pack_pooled`), so
  that prompt caching, online encoding, sharding and guidance treat it as
  any text embedding; `teacher.t5=false` conditions on zeros in T5's
  place, as the pipeline does without it;
- guidance as `StableDiffusion3Pipeline`: `f(null) + w (f(c) - f(null))`
  on the velocity, the null condition being the encoded negative prompt.
The VAE (16 channels, `scaling_factor` and `shift_factor`) and prompt
machinery are the `sd` family's.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.models import mmdit
from boot_jax.runtime import paths
from boot_jax.teachers import base
from boot_jax.teachers.sd import sd_teacher
from boot_jax.teachers.sd3 import export, loading

SD3Error = loading.SD3Error
ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


class SD3Net(nn.Module):
  """The family's network: our MMDiT under the scope `transformer`,
  reading the packed condition (`text_length` text rows, then the pooled
  embedding of `pooled_width`).

  `(x [B, h, w, 16], t [B], cond [B, L, D]) -> velocity [B, h, w, 16]`.
  """

  transformer_config: dict
  text_length: int
  pooled_width: int
  guidance_embedding: bool = False
  dtype: object = None
  attention: str = "auto"
  remat: bool | str = False

  @nn.compact
  def __call__(self, x, t, cond=None, train: bool = False, guidance=None):
    del train  # deterministic, teacher and student alike
    if cond is None:
      raise ValueError("the SD3 transformer needs text embeddings")
    text, pooled = sd_teacher.unpack_pooled(
      cond, self.text_length, self.pooled_width
    )
    return mmdit.MMDiT(
      self.transformer_config,
      dtype=self.dtype,
      attention=self.attention,
      remat=self.remat,
      guidance_embedding=self.guidance_embedding,
      name="transformer",
    )(x, t, text, pooled, guidance=guidance)


def tokenize(parts: dict, prompts):
  """The three tokenizers' ids side by side, `[n, 77 + 77 + 256]` (each
  padded to its length; long prompts truncated with a warning)."""
  prompts = [" ".join(str(p).split()) for p in prompts]
  out = [
    sd_teacher.token_ids(tok, prompts, length, i == 0)
    for i, (tok, length) in enumerate(
      zip(parts["tokenizers"], parts["token_lengths"], strict=True)
    )
  ]
  if len(out) == 2:  # no T5: its ids are never read
    out.append(np.zeros((len(prompts), loading.T5_TOKENS), np.int32))
  return np.concatenate([np.asarray(o, np.int32) for o in out], axis=1)


def encode_prompts(parts: dict, prompts):
  """Packed conditions `[len(prompts), *condition.shape]`."""
  ids = jnp.asarray(tokenize(parts, prompts))
  return parts["text_forward"](parts["text_params"], ids)


@dataclasses.dataclass(frozen=True, eq=False)
class SD3Teacher(sd_teacher.SDTeacher):
  """Stable Diffusion 3 / 3.5 (module doc)."""

  def encode_text(self, texts):
    return encode_prompts(self.parts, texts)

  def tokenize(self, texts):
    return tokenize(self.parts, texts)

  def export_extras(self, out_dir: str, student, params) -> list[str]:
    """A diffusers SD3 folder of the student beside the jax artifact, with
    a PyTorch one-step function (`teachers/sd3/export.py`)."""
    export.export_diffusers(
      self.folder,
      jax.device_get(params),
      student,
      os.path.join(out_dir, "diffusers"),
      t5=len(self.parts["tokenizers"]) == 3,
    )
    return ["diffusers/"]

  def export_readme(self) -> str:
    return export.README


def build(
  config, placement=None, dtype=None, attention: str = "auto"
) -> base.Teacher:
  """An SD3 teacher from `config.path` (a diffusers SD3 / 3.5 folder).

  Keys: those of the `sd` family (`sd_teacher.build`: `path`,
  `resolution` (default 1024), `prompts`, `prompt_column`,
  `prompt_cache`, `text_encoding`, `negative_prompt`), `prediction` (None
  or 'flow'), and `t5` (default true: condition on T5; false: on zeros in
  its place).
  """
  path = config.get("path")
  if path and paths.is_remote(path):
    if not paths.isdir(path):
      raise SD3Error(f"teacher folder {path!r} does not exist")
    path = paths.local_copy(path)  # read once into the local cache
  t5 = config.get("t5")
  t5 = True if t5 is None else bool(t5)
  cfg = loading.check_folder(path, t5)
  table = loading.schedule_config(path)
  wanted = config.get("prediction")
  if wanted and wanted not in ("flow", "flow_prediction"):
    raise SD3Error(
      f"teacher.prediction={wanted!r} but a Stable Diffusion 3 transformer "
      "predicts the flow velocity ('flow')"
    )
  parts = loading.parts(os.path.abspath(path), t5)
  resolution = int(config.get("resolution") or 1024)
  factor = parts["vae_factor"] * int(cfg.get("patch_size", 2))
  if resolution % factor:
    raise SD3Error(
      f"teacher.resolution={resolution} is not divisible by {factor} (the "
      "VAE's factor times the transformer's patch size)"
    )
  latent = resolution // parts["vae_factor"]
  most = int(cfg["pos_embed_max_size"]) * int(cfg.get("patch_size", 2))
  if latent > most:
    raise SD3Error(
      f"teacher.resolution={resolution} is {latent} latents across, more "
      f"than the transformer's positions cover ({most}: pos_embed_max_size "
      "times the patch size)"
    )
  sample_shape = (latent, latent, int(cfg.get("in_channels", 16)))
  length, width = parts["text_length"], parts["text_width"]
  pooled = parts["pooled_width"]
  shape = (length + -(-pooled // width), width)
  condition = base.ConditionSpec("text", shape=shape)
  module = SD3Net(cfg, length, pooled, dtype=dtype, attention=attention)
  params = {"transformer": loading.transformer_params(path, cfg)}
  if placement is not None:
    specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
    params = jax.device_put(params, placement(params, specs))
  encode = functools.partial(encode_prompts, parts)
  encoders = ENCODERS if t5 else ENCODERS[:2]
  fields = base.text_teacher_fields(
    config, path, module, params, table, encode, encoders
  )
  return SD3Teacher(
    **fields,
    prediction="flow",
    sample_shape=sample_shape,
    condition=condition,
    parts=parts,
    folder=os.path.abspath(path),
    attention=attention,
  )
