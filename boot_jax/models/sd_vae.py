"""Stable Diffusion's VAE (diffusers' `AutoencoderKL`) in Flax, from a
diffusers config.json.

Our own port of the encoder and decoder diffusers' PyTorch `AutoencoderKL`
computes: `DownEncoderBlock2D` / `UpDecoderBlock2D` levels of residual
blocks without time conditioning (`models.unet_blocks.ResnetBlock`), a
stride-2 convolution padded on the bottom and right to go down, nearest
upsampling and a convolution to go up, one single-head attention in the
middle, and the optional 1x1 `quant_conv` / `post_quant_conv`.

`encode` returns the latent distribution's mean and log-variance (before
`scaling_factor`), `decode` the image from a latent (after undoing it);
the folder's `scaling_factor` and `shift_factor` are applied by the
caller (`latent = (mean - shift) * scale`). Layout: NHWC. Submodules are
named after PyTorch's module paths, so weights convert by rule
(`models.weights.torch_key`); the attention's pre-0.14 names (`query`,
`key`, `value`, `proj_attn`) are renamed by `legacy_key`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from boot_jax.models import attention as attention_lib
from boot_jax.models import layers
from boot_jax.models import unet_blocks as blocks

EPS = 1e-6  # every norm of diffusers' VAE
# The options of an AutoencoderKL config.json the port runs (key, allowed
# values, diffusers' default).
OPTIONS = (
  ("act_fn", tuple(blocks.ACTIVATIONS), "silu"),
  ("mid_block_add_attention", (True, False), True),
  ("use_quant_conv", (True, False), True),
  ("use_post_quant_conv", (True, False), True),
)
# Attention names of VAEs saved before diffusers 0.14.
LEGACY = {
  "query": "to_q",
  "key": "to_k",
  "value": "to_v",
  "proj_attn": "to_out.0",
}


class VAEConfigError(ValueError):
  """A VAE config.json this port does not implement."""


def check_config(cfg: dict) -> None:
  """Refuses, in one line, any block type or option the port does not run."""
  fixed = dict(norm_type="group", latents_mean=None, latents_std=None)
  blocks.check_options(
    cfg, fixed, OPTIONS, "VAE", VAEConfigError, part="VAE",
    block_types=(
      ("down_block_types", ("DownEncoderBlock2D",)),
      ("up_block_types", ("UpDecoderBlock2D",)),
    ),
  )  # fmt: skip


def legacy_key(pt_key: str) -> str:
  """A VAE weight's key with the pre-0.14 attention names renamed."""
  parts = pt_key.split(".")
  if len(parts) >= 2 and parts[-2] in LEGACY:
    parts[-2:-1] = LEGACY[parts[-2]].split(".")
  return ".".join(parts)


class MidAttention(nn.Module):
  """The middle block's attention: group norm, one head over the whole
  width (q, k, v with biases), output projection, plus the input."""

  groups: int
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = blocks.group_norm(self.groups, EPS, self.dtype, "group_norm")(x)
    h = h.reshape(b, hh * ww, c)

    def proj(name):
      out = layers.dense(c, ("embed", "heads"), dtype=self.dtype, name=name)
      return out(h).reshape(b, hh * ww, 1, c)

    out = attention_lib.attend(
      proj("to_q"),
      proj("to_k"),
      proj("to_v"),
      scale=c**-0.5,
      implementation=self.attention,
    )
    out = layers.dense(c, ("heads", "embed"), dtype=self.dtype,
                       name="to_out_0")(out.reshape(b, hh * ww, c))  # fmt: skip
    return out.reshape(b, hh, ww, c) + x


class MidBlock(nn.Module):
  """`UNetMidBlock2D` without time: resnet, attention, resnet."""

  features: int
  groups: int
  act: str
  add_attention: bool = True
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, h):
    resnet = dict(groups=self.groups, eps=EPS, act=self.act,
                  scale_shift=False, dtype=self.dtype)  # fmt: skip
    h = blocks.ResnetBlock(self.features, **resnet, name="resnets_0")(h, None)
    if self.add_attention:
      h = MidAttention(self.groups, self.attention, self.dtype,
                       name="attentions_0")(h)  # fmt: skip
    return blocks.ResnetBlock(self.features, **resnet, name="resnets_1")(
      h, None
    )


class _Level(nn.Module):
  """One `DownEncoderBlock2D` or `UpDecoderBlock2D`: `num_layers` resnets,
  then the resampler when `resample` is 'down' or 'up'."""

  features: int
  num_layers: int
  groups: int
  act: str
  resample: str | None = None
  dtype: object = None

  @nn.compact
  def __call__(self, h):
    for i in range(self.num_layers):
      h = blocks.ResnetBlock(
        self.features, self.groups, EPS, self.act, False, dtype=self.dtype,
        name=f"resnets_{i}",
      )(h, None)  # fmt: skip
    if self.resample:
      h = blocks.Resampler(
        self.features, self.resample == "up", ((0, 1), (0, 1)), self.dtype,
        name=f"{self.resample}samplers_0",
      )(h)  # fmt: skip
    return h


def _settings(cfg: dict) -> dict:
  """What the encoder and decoder read of the config."""
  return dict(
    widths=list(cfg["block_out_channels"]),
    groups=int(cfg.get("norm_num_groups", 32)),
    act=cfg.get("act_fn", "silu"),
    layers=int(cfg.get("layers_per_block", 2)),
    mid_attention=bool(cfg.get("mid_block_add_attention", True)),
  )


class Encoder(nn.Module):
  """Image `[B, H, W, 3]` -> the latent distribution's parameters
  `[B, H / f, W / f, 2 * latent_channels]` (before `quant_conv`)."""

  cfg: dict
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    c, dt = _settings(self.cfg), self.dtype
    widths, groups, act = c["widths"], c["groups"], c["act"]
    h = layers.conv(widths[0], dtype=dt, name="conv_in")(x)
    for i, width in enumerate(widths):
      h = _Level(
        width, c["layers"], groups, act,
        "down" if i < len(widths) - 1 else None, dt, name=f"down_blocks_{i}",
      )(h)  # fmt: skip
    h = MidBlock(widths[-1], groups, act, c["mid_attention"], self.attention,
                 dt, name="mid_block")(h)  # fmt: skip
    h = blocks.group_norm(groups, EPS, dt, "conv_norm_out")(h)
    latent = int(self.cfg.get("latent_channels", 4))
    return layers.conv(2 * latent, dtype=dt, name="conv_out")(
      blocks.ACTIVATIONS[act](h)
    )


class Decoder(nn.Module):
  """Latent `[B, h, w, latent_channels]` (after `post_quant_conv`) ->
  image `[B, h f, w f, out_channels]`."""

  cfg: dict
  attention: str = "auto"
  dtype: object = None

  @nn.compact
  def __call__(self, z):
    c, dt = _settings(self.cfg), self.dtype
    widths, groups, act = c["widths"], c["groups"], c["act"]
    h = layers.conv(widths[-1], dtype=dt, name="conv_in")(z)
    h = MidBlock(widths[-1], groups, act, c["mid_attention"], self.attention,
                 dt, name="mid_block")(h)  # fmt: skip
    for i, width in enumerate(widths[::-1]):
      h = _Level(
        width, c["layers"] + 1, groups, act,
        "up" if i < len(widths) - 1 else None, dt, name=f"up_blocks_{i}",
      )(h)  # fmt: skip
    h = blocks.group_norm(groups, EPS, dt, "conv_norm_out")(h)
    out = int(self.cfg.get("out_channels", 3))
    return layers.conv(out, dtype=dt, name="conv_out")(
      blocks.ACTIVATIONS[act](h)
    )


class AutoencoderKL(nn.Module):
  """diffusers' `AutoencoderKL`: `encode(x) -> (mean, logvar)` of the
  latent (log-variance clipped to [-30, 20] as diffusers does) and
  `decode(z) -> image`; `__call__` decodes the encoder's mean (for
  `init`)."""

  vae_config: dict
  attention: str = "auto"
  dtype: object = None

  def setup(self):
    check_config(self.vae_config)
    cfg, dt = self.vae_config, self.dtype
    latent = int(cfg.get("latent_channels", 4))
    self.encoder = Encoder(cfg, self.attention, dt)
    self.decoder = Decoder(cfg, self.attention, dt)
    self.quant_conv = (
      layers.conv(2 * latent, 1, dtype=dt)
      if cfg.get("use_quant_conv", True)
      else None
    )
    self.post_quant_conv = (
      layers.conv(latent, 1, dtype=dt)
      if cfg.get("use_post_quant_conv", True)
      else None
    )

  def encode(self, x):
    moments = self.encoder(x.astype(self.dtype or jnp.float32))
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z):
    z = z.astype(self.dtype or jnp.float32)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x):
    return self.decode(self.encode(x)[0])
