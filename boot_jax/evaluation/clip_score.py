"""CLIP score: how well images match their captions, as the field reports it.

    score = 100 * mean_i max(cos(image_i, caption_i), 0)

with image and caption embeddings from a CLIP model (our port of
transformers' `CLIPModel`, `models.clip_vision`; ViT-L/14 is the usual
choice) read from a local folder
(`config.json`, `model.safetensors` or `flax_model.msgpack`, and the
tokenizer's `vocab.json` and `merges.txt`); nothing is downloaded.

Images go in as `[N, H, W, 3]` in [-1, 1] (what `sample` writes). They are
mapped to [0, 1], quantised to uint8 levels as a saved image would be,
resized whole (bicubic, antialiased; generated images are square, so there
is no crop) to the model's `image_size`, and normalised with CLIP's mean
and standard deviation (the folder's `preprocessor_config.json` when it
has one). Captions are tokenised to the model's 77 positions, truncated.
"""

from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.models import clip_text, clip_vision
from boot_jax.teachers.sd import loading

# CLIP's published normalisation (OpenAI's preprocessing).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class ClipError(ValueError):
  """A CLIP folder that cannot be used."""


def require_clip_folder(folder: str) -> None:
  """Refuses a local folder without a config.json (cheap: no import)."""
  if not os.path.isfile(os.path.join(folder, "config.json")):
    raise ClipError(f"{folder} has no config.json: not a CLIP folder")


class ClipScorer:
  """A CLIP model from a local folder, for embeddings and the score."""

  def __init__(self, folder: str, batch_size: int = 64):
    from transformers import CLIPConfig, CLIPTokenizer  # noqa: PLC0415

    require_clip_folder(folder)
    config = CLIPConfig.from_pretrained(folder)
    try:
      self.module = clip_vision.CLIP(config.to_dict())
    except clip_text.CLIPConfigError as e:
      raise ClipError(f"{folder}: {e}") from None
    self.image_size = int(config.vision_config.image_size)
    ids = jnp.zeros((1, 1), jnp.int32)
    pixels = jnp.zeros((1, self.image_size, self.image_size, 3))
    abstract = jax.eval_shape(
      lambda: self.module.init(jax.random.key(0), pixels, ids)
    )["params"]
    try:
      self.params = loading.load_part(
        folder,
        nn.meta.unbox(abstract),
        "flax_model.msgpack",
        "model",
        "CLIP",
        rename_pt=clip_vision.weight_key,
        rename_flax=loading.clip_flax_key,
      )
    except loading.SDError as e:
      raise ClipError(str(e)) from None
    self.tokenizer = CLIPTokenizer.from_pretrained(folder)
    self.max_length = int(config.text_config.max_position_embeddings)
    self.mean, self.std = _normalisation(folder)
    self.batch_size = batch_size

  @functools.cached_property
  def _image_fn(self):
    # Our module reads NHWC; `preprocess` gives PyTorch's NCHW.
    return jax.jit(
      lambda p, x: self.module.apply(
        {"params": p},
        jnp.transpose(x, (0, 2, 3, 1)),
        method=clip_vision.CLIP.image_features,
      )
    )

  @functools.cached_property
  def _text_fn(self):
    # The pooled state is the end token's, which the causal mask keeps
    # from seeing the padding after it: the padding mask changes nothing.
    return jax.jit(
      lambda p, i, m: self.module.apply(
        {"params": p}, i, method=clip_vision.CLIP.text_features
      )
    )

  def preprocess(self, images) -> np.ndarray:
    """`[N, H, W, 3]` in [-1, 1] -> CLIP's `[N, 3, S, S]` input."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ClipError(f"images must be [N, H, W, 3], got shape {x.shape}")
    x = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5) / 255.0
    s = self.image_size
    x = jax.image.resize(x, (len(x), s, s, 3), "bicubic", antialias=True)
    x = (np.clip(np.asarray(x), 0.0, 1.0) - self.mean) / self.std
    return np.transpose(x, (0, 3, 1, 2)).astype(np.float32)

  def image_embeddings(self, pixels) -> np.ndarray:
    """Unit-norm embeddings of preprocessed `[N, 3, S, S]` inputs."""
    out = [
      np.asarray(self._image_fn(self.params, jnp.asarray(pixels[i : i + b])))
      for i, b in _batches(len(pixels), self.batch_size)
    ]
    return _unit(np.concatenate(out))

  def tokenize(self, captions):
    t = self.tokenizer(
      list(captions),
      padding="max_length",
      max_length=self.max_length,
      truncation=True,
      return_tensors="np",
    )
    return t.input_ids.astype(np.int32), t.attention_mask.astype(np.int32)

  def text_embeddings(self, captions) -> np.ndarray:
    ids, mask = self.tokenize(captions)
    out = [
      np.asarray(
        self._text_fn(
          self.params, jnp.asarray(ids[i : i + b]), jnp.asarray(mask[i : i + b])
        )
      )
      for i, b in _batches(len(ids), self.batch_size)
    ]
    return _unit(np.concatenate(out))

  def score(self, images, captions) -> float:
    """100 x the mean clipped cosine of each image and its caption."""
    if len(images) != len(captions):
      raise ClipError(
        f"{len(images)} images but {len(captions)} captions: one each"
      )
    img = self.image_embeddings(self.preprocess(images))
    txt = self.text_embeddings(captions)
    return clip_score(img, txt)


def clip_score(image_embeddings, text_embeddings) -> float:
  """100 x mean max(cos, 0) of paired rows (any scale; normalised here)."""
  cos = np.sum(_unit(image_embeddings) * _unit(text_embeddings), axis=1)
  return float(100.0 * np.mean(np.maximum(cos, 0.0)))


def _unit(a) -> np.ndarray:
  a = np.asarray(a, np.float64)
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _batches(n: int, size: int):
  for i in range(0, n, size):
    yield i, min(size, n - i)


def _normalisation(folder: str):
  path = os.path.join(folder, "preprocessor_config.json")
  mean, std = MEAN, STD
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      cfg = json.load(f)
    mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)
