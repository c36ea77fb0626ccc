"""What benchmarks/sd_memory.py and benchmarks/if_memory.py share: a
train step built around a teacher without weights, lowered on abstract
inputs, and XLA's bytes per device of the compiled program.

Importing this module sets nothing (the two scripts choose their own
number of fake CPU devices before jax starts).
"""

from __future__ import annotations

import jax
import numpy as np

TOKENS = 77  # CLIP's and IF's T5 prompt length

# Stable Diffusion's published UNet configs (diffusers' config.json keys).
SD_COMMON = dict(
  in_channels=4,
  out_channels=4,
  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
  block_out_channels=(320, 640, 1280, 1280),
  layers_per_block=2,
)
SD15_UNET = dict(
  SD_COMMON, sample_size=64, cross_attention_dim=768, attention_head_dim=8
)


class NoPrompts:
  """Stands in for the prompt cache: zero embeddings of the right shape
  (only shapes reach the compiled step). Embeddings come as from the
  cache: the step reads the same `cond` however prompts were encoded."""

  encoding = "cache"
  source_sha256 = ""

  def __init__(self, width: int, rows: int = TOKENS):
    self.shape = (rows, width)

  def __len__(self) -> int:
    return 1000

  def rows(self, indices) -> np.ndarray:
    return np.zeros((len(indices),) + self.shape, np.float32)


def sd_teacher(module, params, prediction: str, sample_shape, shape, cls):
  """A teacher of class `cls` (SD's or SDXL's) around `module` and its
  `params` (arrays or ShapeDtypeStructs): SD's noise table and DDIM
  spacing, zero null condition, `NoPrompts` of the condition's `shape`."""
  import functools  # noqa: PLC0415

  import jax.numpy as jnp  # noqa: PLC0415

  from boot_jax import teachers  # noqa: PLC0415
  from boot_jax.config import defaults  # noqa: PLC0415
  from boot_jax.diffusion import predictions, schedules  # noqa: PLC0415
  from boot_jax.teachers import base  # noqa: PLC0415

  schedule = defaults.discrete_schedule(
    "scaled_linear", 1000, 0.00085, 0.012, set_alpha_to_one=False
  )
  return cls(
    name="sd",
    apply=base.module_apply(module),
    params=params,
    schedule=schedules.make_schedule(schedule),
    prediction=predictions.canonical_prediction(prediction),
    sample_shape=tuple(sample_shape),
    condition=teachers.ConditionSpec("text", shape=tuple(shape)),
    module=module,
    null_embedding=jnp.zeros(shape, jnp.float32),
    ddim_spacing=("leading", 1),
    prompt_loader=functools.partial(NoPrompts, shape[1], shape[0]),
  )


def placed_abstract(tree, shardings):
  """ShapeDtypeStructs of `tree`'s leaves carrying `shardings`."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    tree,
    shardings,
  )


def abstract_batch(setup) -> dict:
  """The step's first batch as ShapeDtypeStructs with its shardings."""
  drawn = setup.draw(0, 0)
  return placed_abstract(drawn, jax.tree.map(lambda x: x.sharding, drawn))


def memory(compiled) -> dict:
  """`compiled.memory_analysis()` in bytes per device, and their total
  (arguments + outputs + temporaries - aliased)."""
  m = compiled.memory_analysis()
  out = dict(
    argument=int(m.argument_size_in_bytes),
    output=int(m.output_size_in_bytes),
    temp=int(m.temp_size_in_bytes),
    alias=int(m.alias_size_in_bytes),
    code=int(m.generated_code_size_in_bytes),
  )
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out
