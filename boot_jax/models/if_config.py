"""Which diffusers UNet configs the IF port (`models.if_unet`) runs.

`check_config` refuses, in one line naming the key, any block type or
option of a diffusers `UNet2DConditionModel` config.json that the port
does not implement, so that no config is silently read as another.
"""

from __future__ import annotations

from boot_jax.models.unet_blocks import ACTIVATIONS, FIXED, check_options

DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
MID_BLOCKS = ("UNetMidBlock2DSimpleCrossAttn",)


class IFConfigError(ValueError):
  """A UNet config.json this port does not implement."""


def per_block(value, n: int) -> list:
  return list(value) if isinstance(value, (list, tuple)) else [value] * n


def check_config(cfg: dict) -> None:
  """Refuses, in one line, any key or block type the port does not run."""
  options = (
    ("mid_block_type", MID_BLOCKS, "UNetMidBlock2DCrossAttn"),
    ("addition_embed_type", (None, "text"), None),
    ("encoder_hid_dim_type", (None, "text_proj"), None),
    ("resnet_time_scale_shift", ("default", "scale_shift"), None),
    ("cross_attention_norm", (None, "group_norm"), None),
    ("act_fn", tuple(ACTIVATIONS), "silu"),
    ("time_embedding_act_fn", (None, *ACTIVATIONS), None),
  )
  check_options(
    cfg, FIXED, options, "DeepFloyd IF", IFConfigError,
    block_types=(("down_block_types", DOWN_BLOCKS),
                 ("up_block_types", UP_BLOCKS)),
  )  # fmt: skip
