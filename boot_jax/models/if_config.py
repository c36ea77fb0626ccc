"""Which diffusers UNet configs the IF port (`models.if_unet`) runs.

`check_config` refuses, in one line naming the key, any block type or
option of a diffusers `UNet2DConditionModel` config.json that the port
does not implement, so that no config is silently read as another.
"""

from __future__ import annotations

import functools

import jax

DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DSimpleCrossAttn",)
ACTIVATIONS = {
  "gelu": functools.partial(jax.nn.gelu, approximate=False),  # nn.GELU()
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}
# Keys whose value must be the one given here (diffusers' default when the
# key is absent): IF does not use the features they switch on.
FIXED = dict(
  class_embed_type=None,
  num_class_embeds=None,
  time_cond_proj_dim=None,
  timestep_post_act=None,
  center_input_sample=False,
  time_embedding_type="positional",
  time_embedding_dim=None,
  conv_in_kernel=3,
  conv_out_kernel=3,
  dual_cross_attention=False,
  class_embeddings_concat=False,
)


class IFConfigError(ValueError):
  """A UNet config.json this port does not implement."""


def per_block(value, n: int) -> list:
  return list(value) if isinstance(value, (list, tuple)) else [value] * n


def check_config(cfg: dict) -> None:
  """Refuses, in one line, any key or block type the port does not run."""
  for key, want in FIXED.items():
    if cfg.get(key, want) != want:
      raise IFConfigError(
        f"the UNet's {key}={cfg[key]!r} is not supported by the IF port "
        f"(expected {want!r})"
      )
  checks = (
    ("down_block_types", DOWN_BLOCKS),
    ("up_block_types", UP_BLOCKS),
  )
  for key, allowed in checks:
    for kind in cfg.get(key) or ():
      if kind not in allowed:
        raise IFConfigError(
          f"the UNet's {key} has {kind!r}: not a DeepFloyd IF UNet (the IF "
          f"port runs {', '.join(allowed)})"
        )
  options = (
    ("mid_block_type", MID_BLOCKS),
    ("addition_embed_type", (None, "text")),
    ("encoder_hid_dim_type", (None, "text_proj")),
    ("resnet_time_scale_shift", ("default", "scale_shift")),
    ("cross_attention_norm", (None, "group_norm")),
    ("act_fn", tuple(ACTIVATIONS)),
    ("time_embedding_act_fn", (None, *ACTIVATIONS)),
  )
  defaults = dict(mid_block_type="UNetMidBlock2DCrossAttn", act_fn="silu")
  for key, allowed in options:
    value = cfg.get(key, defaults.get(key))
    if value not in allowed:
      raise IFConfigError(
        f"the UNet's {key}={value!r} is not supported by the IF port "
        f"(expected one of {allowed})"
      )
