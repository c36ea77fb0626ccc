r"""Bytes per device of BOOT on DeepFloyd IF-I-XL: state, teacher, T5-XXL.

    python benchmarks/if_memory.py [--write] [--unet-config FILE] [--refine]

Shape-based (nothing is allocated): traces our Flax IF UNet
(`models.if_unet`) at IF-I-XL's shapes and our T5 encoder
(`models.t5_encoder`) at T5 v1.1 XXL's (the IF text encoder), shards them
on 16 fake CPU devices with our rules (the UNet by its parameters' logical
names; T5 whole on every device, as the teacher holds it) and sums each
device's shard shapes, for fsdp 4, 8 and 16 (data takes the other
devices; parameters are never split over data).

IF-I-XL's unet/config.json cannot be read offline here; the default
shapes are stated in the table (704 base channels, x (1, 2, 3, 4), three
residual blocks a level, 64-wide heads, 4096-wide T5 states: 4.4B
parameters, which DeepFloyd rounds to 4.3B). Pass your folder's
`--unet-config /models/if_i_xl/unet/config.json` to measure the real one.
`--write` replaces the table in docs/text_to_image.md.

`--refine` instead lowers and compiles BOOT's step and the refinement
phase's step (boot.refine) as configs/if_i_xl.py ships them (global batch
64, bf16, remat, guidance 7, fsdp over all 16 devices) on an IF teacher
that holds no weights, and writes XLA's bytes per device (CPU buffer
assignment: an estimate for the cards) next to each other.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=16"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from unittest import mock  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import demo  # noqa: E402
import xla_memory  # noqa: E402

from boot_jax import teachers  # noqa: E402
from boot_jax.config import recipes  # noqa: E402
from boot_jax.diffusion import schedules  # noqa: E402
from boot_jax.distill import state as state_lib  # noqa: E402
from boot_jax.models import if_unet, t5_encoder  # noqa: E402
from boot_jax.runtime import sharding  # noqa: E402
from boot_jax.teachers import base  # noqa: E402
from boot_jax.teachers.deepfloyd_if import if_teacher  # noqa: E402
from boot_jax.training import trainer  # noqa: E402

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "text_to_image.md"
BEGIN, END = "<!-- if memory: begin -->", "<!-- if memory: end -->"
REFINE_BEGIN = "<!-- if refine memory: begin -->"
REFINE_END = "<!-- if refine memory: end -->"
GIB = 2**30
FSDPS = (4, 8, 16)
TOKENS = xla_memory.TOKENS
XL = dict(
  sample_size=64,
  in_channels=3,
  out_channels=6,
  block_out_channels=[704, 1408, 2112, 2816],
  layers_per_block=3,
  down_block_types=["ResnetDownsampleBlock2D"]
  + ["SimpleCrossAttnDownBlock2D"] * 3,
  up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
  mid_block_type="UNetMidBlock2DSimpleCrossAttn",
  attention_head_dim=64,
  cross_attention_dim=4096,
  encoder_hid_dim=4096,
  encoder_hid_dim_type="text_proj",
  addition_embed_type="text",
  addition_embed_type_num_heads=64,
  cross_attention_norm="group_norm",
  resnet_time_scale_shift="scale_shift",
  act_fn="gelu",
)
# google/t5-v1_1-xxl, the encoder IF's folders ship.
T5_XXL = dict(
  vocab_size=32128,
  d_model=4096,
  d_kv=64,
  d_ff=10240,
  num_layers=24,
  num_heads=64,
  feed_forward_proj="gated-gelu",
)


def unet_abstract(cfg: dict, module=None):
  """The UNet's boxed parameter shapes (`module`: an `IFUNet` of `cfg`
  with other dtype or attention)."""
  module = module or if_unet.IFUNet(cfg)
  res = int(cfg.get("sample_size", 64))
  width = int(cfg.get("encoder_hid_dim") or cfg["cross_attention_dim"])
  return jax.eval_shape(
    module.init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32),
    jax.ShapeDtypeStruct((1,), jnp.float32),
    jax.ShapeDtypeStruct((1, TOKENS, width), jnp.float32),
  )["params"]


def t5_abstract():
  module = t5_encoder.T5Encoder(dict(T5_XXL))
  ids = jnp.zeros((1, 1), jnp.int32)
  return nn.meta.unbox(
    jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids + 1))[
      "params"
    ]
  )


def rows(cfg: dict) -> list[str]:
  boxed = unet_abstract(cfg)
  params = nn.meta.unbox(boxed)
  opt = optax.adamw(1e-5)
  state = jax.eval_shape(lambda p: state_lib.create(p, opt, True), params)
  specs = sharding.logical_specs(
    jax.eval_shape(lambda p: state_lib.create(p, opt, True), boxed)
  )
  t5 = t5_abstract()
  n_unet = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  n_t5 = sum(math.prod(x.shape) for x in jax.tree.leaves(t5))
  out = []
  for f in FSDPS:
    mesh = sharding.make_mesh(
      ml_collections.ConfigDict(dict(data=16 // f, fsdp=f, tensor=1))
    )
    rules = sharding.DEFAULT_RULES
    student = sharding.shard_bytes(
      state, sharding.tree_shardings(state, specs, mesh, rules)
    )
    teacher = sharding.shard_bytes(
      params,
      sharding.tree_shardings(
        params, sharding.logical_specs(boxed), mesh, rules
      ),
    )
    text = sharding.shard_bytes(
      t5,
      sharding.tree_shardings(
        t5,
        jax.tree.map(lambda _: jax.sharding.PartitionSpec(), t5),
        mesh,
        rules,
      ),
    )
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    out.append(
      f"| {f} | {gib(student)} | {gib(teacher)} | {gib(text)} | "
      f"{gib(student + teacher + text)} |"
    )
    print(out[-1], flush=True)
  return [f"{n_unet / 1e9:.2f}", f"{n_t5 / 1e9:.2f}", *out]


def section(cfg: dict, source: str) -> str:
  n_unet, n_t5, *table = rows(cfg)
  date = datetime.date.today().isoformat()
  return (
    "\n".join(
      [
        BEGIN,
        "Command: `python benchmarks/if_memory.py --write` (shard shapes on "
        f"16 fake CPU devices, jax {jax.__version__}, {date}). UNet: "
        f"{source}, {n_unet}B parameters; T5 v1.1 XXL encoder: {n_t5}B. "
        "GiB per device, float32, activations excluded; the frozen teacher "
        "and T5 over fsdp (`sharding.teacher=auto` does that above 1 GiB).",
        "",
        "| fsdp | student params + AdamW + EMA | teacher UNet | T5-XXL "
        "encoder | total |",
        "|---|---|---|---|---|",
        *table,
        END,
      ]
    )
    + "\n"
  )


def _abstract_family(cfg: dict):
  """A teacher family like `teachers.deepfloyd_if` whose `build` reads no
  folder: `if_teacher.build`'s teacher, field by field, with parameters
  as ShapeDtypeStructs carrying the placement's shardings, IF's noise
  table (squaredcos_cap_v2) and cached zero prompt embeddings."""

  def build(config, placement=None, dtype=None, attention="auto"):
    del config
    res = int(cfg.get("sample_size", 64))
    width = int(cfg.get("encoder_hid_dim") or cfg["cross_attention_dim"])
    sample_shape = (res, res, 3)
    condition = base.ConditionSpec("text", shape=(TOKENS, width))
    module = if_unet.IFUNet(cfg, dtype=dtype, attention=attention)
    boxed = unet_abstract(cfg, module)
    abstract = nn.meta.unbox(boxed)
    params = xla_memory.placed_abstract(
      abstract, placement(abstract, sharding.logical_specs(boxed))
    )
    table = dict(
      type="discrete",
      beta_schedule="squaredcos_cap_v2",
      num_train_steps=1000,
      beta_start=0.0001,
      beta_end=0.02,
      set_alpha_to_one=True,
      name="",
    )

    return if_teacher.IFTeacher(
      name="if",
      apply=base.module_apply(module),
      params=params,
      schedule=schedules.make_schedule(ml_collections.ConfigDict(table)),
      prediction="eps",
      sample_shape=sample_shape,
      condition=condition,
      module=module,
      null_embedding=jnp.zeros(condition.shape, jnp.float32),
      ddim_spacing=("leading", 0),
      prompt_loader=lambda: xla_memory.NoPrompts(width),
    )

  return types.SimpleNamespace(build=build)


def compile_step(cfg: dict, refine: bool) -> dict:
  """configs/if_i_xl.py's BOOT step (with `refine`, the refinement
  phase's step, its settings as shipped) lowered and compiled on the 16
  devices; XLA's bytes per device."""
  c = recipes.if_boot_config("xl")
  c.teacher.name = "if_abstract"
  c.teacher.text_encoding = "cache"  # the step reads embeddings either way
  c.boot.refine = refine
  with mock.patch.dict(
    teachers.TEACHERS, {"if_abstract": _abstract_family(cfg)}
  ):
    s = trainer.setup(c)
  batch = xla_memory.abstract_batch(s)
  step = s.refine_step if refine else s.train_step
  t0 = time.perf_counter()
  compiled = step.lower(s.abstract_state(), s.teacher.params, batch).compile()
  out = dict(
    xla_memory.memory(compiled),
    seconds=round(time.perf_counter() - t0, 1),
    fsdp=int(s.mesh.shape["fsdp"]),
    batch=int(c.train.batch_size),
  )
  print(json.dumps(out), flush=True)
  del compiled, s
  jax.clear_caches()
  gc.collect()
  return out


def refine_section(cfg: dict, source: str) -> str:
  gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
  lines = [
    REFINE_BEGIN,
    "Command: `python benchmarks/if_memory.py --refine --write` (16 fake "
    f"CPU devices, jax {jax.__version__}, "
    f"{datetime.date.today().isoformat()}). UNet: {source}. "
    "configs/if_i_xl.py as shipped (global batch 64, fsdp over the 16 "
    "devices, bf16, remat, guidance 7; with `boot.refine=true` and its "
    "defaults: teacher and fake network both guided at 7), prompt "
    "embeddings from a cache; XLA's buffer assignment on the CPU, GiB "
    "per device: an estimate for the cards.",
    "",
    "| step | fsdp | batch / device | arguments | outputs | temporaries | "
    "aliased | total | compile s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for refine in (False, True):
    r = compile_step(cfg, refine)
    lines.append(
      f"| {'refinement' if refine else 'BOOT'} | {r['fsdp']} | "
      f"{r['batch'] // 16} | {gib(r['argument'])} | {gib(r['output'])} | "
      f"{gib(r['temp'])} | {gib(r['alias'])} | **{gib(r['total'])}** | "
      f"{r['seconds']:.0f} |"
    )
  lines.append(REFINE_END)
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--write", action="store_true", help="update the doc")
  p.add_argument("--unet-config", help="a unet/config.json to measure")
  p.add_argument(
    "--refine",
    action="store_true",
    help="compile BOOT's and the refinement's step (XLA's bytes per device)",
  )
  args = p.parse_args()
  if args.unet_config:
    cfg = json.loads(pathlib.Path(args.unet_config).read_text())
    source = f"`{args.unet_config}`"
  else:
    cfg = XL
    source = (
      "IF-I-XL's assumed shapes (see the script: 704 base channels x "
      "(1, 2, 3, 4), 3 blocks a level)"
    )
  if args.refine:
    text, begin, end = refine_section(cfg, source), REFINE_BEGIN, REFINE_END
  else:
    text, begin, end = section(cfg, source), BEGIN, END
  print(text)
  if args.write:
    demo.write_section(DOC, text, begin, end)


if __name__ == "__main__":
  main()
