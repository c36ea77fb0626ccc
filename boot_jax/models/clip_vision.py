"""CLIP's image tower and the dual CLIP model in Flax, from a transformers
config.json.

Our own port of what transformers' PyTorch `CLIPVisionModel` and
`CLIPModel` compute (the CLIP score of `evaluate --protocol text`):
non-overlapping patches embedded by a strided convolution, a class token,
learned positions, a layer norm before the transformer (`pre_layrnorm`,
PyTorch's spelling), the text tower's layers without a mask, and the
class token's state after `post_layernorm` as the pooled output. `CLIP`
holds both towers and their projections (`visual_projection`,
`text_projection`) under PyTorch's names, so a `CLIPModel` folder's
weights convert by rule (`weight_key`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from boot_jax.models import clip_text, layers
from boot_jax.models import unet_blocks as blocks


def weight_key(pt_key: str) -> str | None:
  """A transformers `CLIPModel` weight's key as `models.weights.torch_key`
  reads it (`clip_text.table_key`, for both towers)."""
  return clip_text.table_key(pt_key)


class _VisionEmbeddings(nn.Module):
  width: int
  patch: int
  positions: int

  @nn.compact
  def __call__(self, pixels):
    b = pixels.shape[0]
    patches = nn.Conv(
      self.width,
      (self.patch, self.patch),
      strides=(self.patch, self.patch),
      padding="VALID",
      use_bias=False,
      kernel_init=layers.partitioned(
        nn.initializers.lecun_normal(),
        ("conv_h", "conv_w", "conv_in", "conv_out"),
      ),
      name="patch_embedding",
    )(pixels)
    patches = patches.reshape(b, -1, self.width)
    cls = self.param(
      "class_embedding",
      layers.partitioned(nn.initializers.normal(0.02), ("embed",)),
      (self.width,),
    )
    h = jnp.concatenate(
      [jnp.broadcast_to(cls, (b, 1, self.width)), patches], axis=1
    )
    table = nn.Embed(
      self.positions,
      self.width,
      embedding_init=layers.partitioned(
        nn.initializers.normal(0.02), ("classes", "embed")
      ),
      name="position_embedding",
    )
    return h + table(jnp.arange(h.shape[1]))[None]


class _VisionTransformer(nn.Module):
  cfg: dict
  dtype: object = None

  @nn.compact
  def __call__(self, pixels):
    cfg = self.cfg
    width = int(cfg["hidden_size"])
    patch = int(cfg["patch_size"])
    size = int(cfg["image_size"])
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    h = _VisionEmbeddings(
      width, patch, (size // patch) ** 2 + 1, name="embeddings"
    )(pixels.astype(jnp.float32))
    h = blocks.layer_norm(self.dtype, "pre_layrnorm", eps)(h)
    h, _ = clip_text.Encoder(cfg, False, self.dtype, name="encoder")(h, None)
    return blocks.layer_norm(self.dtype, "post_layernorm", eps)(h[:, 0])


def _projection(dim: int, dtype, name: str):
  return nn.Dense(
    dim,
    use_bias=False,
    dtype=dtype,
    kernel_init=layers.partitioned(
      nn.initializers.lecun_normal(), ("embed", "mlp")
    ),
    name=name,
  )


class CLIP(nn.Module):
  """transformers' `CLIPModel` (`config`: its config.json, with
  `text_config` and `vision_config`): `image_features(pixels [B, S, S, 3])`
  and `text_features(ids [B, L])`, each the projected pooled state (not
  normalised); `__call__` returns both (for `init`)."""

  config: dict
  dtype: object = None

  def setup(self):
    cfg = self.config
    text_cfg = dict(cfg["text_config"])
    clip_text.check_config(text_cfg)
    clip_text.check_config(dict(cfg["vision_config"]))
    dim = int(cfg.get("projection_dim", 512))
    self.text_model = clip_text.TextTransformer(text_cfg, dtype=self.dtype)
    self.vision_model = _VisionTransformer(
      dict(cfg["vision_config"]), self.dtype
    )
    self.visual_projection = _projection(dim, self.dtype, "visual_projection")
    self.text_projection = _projection(dim, self.dtype, "text_projection")
    self.logit_scale = self.param(
      "logit_scale",
      layers.partitioned(nn.initializers.constant(2.6592), ()),
      (),
    )

  def image_features(self, pixels):
    return self.visual_projection(self.vision_model(pixels)).astype(jnp.float32)

  def text_features(self, ids):
    _, _, pooled = self.text_model(jnp.asarray(ids, jnp.int32))
    return self.text_projection(pooled).astype(jnp.float32)

  def __call__(self, pixels, ids):
    return self.image_features(pixels), self.text_features(ids)
