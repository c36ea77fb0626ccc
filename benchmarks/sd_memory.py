r"""Bytes per device of BOOT on Stable Diffusion's UNets: state and XLA.

    python benchmarks/sd_memory.py [--write] [--quick] [--batches 4,8,16,32]
    python benchmarks/sd_memory.py --refine | --remat | --sdxl [--write]

Two measurements, on 8 fake CPU devices:

1. The parameter state, from shard shapes: traces (jax.eval_shape, nothing
   allocated) our Stable Diffusion UNet (`models.sd_unet`, the parameter
   tree diffusers' Flax UNet had) at SD 1.5's and SD 2.1's published
   configs, the BOOT state around it (student params, AdamW moments, EMA;
   float32) and the frozen teacher, shards them with FSDP over the
   largest divisible dimension of each (the table was made before the
   UNet's parameters carried logical names) and sums each device's shard
   shapes.
2. XLA's own accounting of the real BOOT train step: `trainer.setup` builds
   it from `recipes.sd_boot_config` as shipped (bf16 compute, remat,
   guidance inside the teacher, EMA) around a Stable Diffusion teacher
   whose parameters are ShapeDtypeStructs with shardings (no weights, no
   diffusers folder), the step is lowered with abstract inputs and
   compiled, and `compiled.memory_analysis()` gives the bytes per device
   (arguments, outputs, temporaries, aliased). Per-device batches 4, 8, 16
   and 32 under data=1, fsdp=1, 4 and 8. Also: the 512 -> 768 px growth of
   the temporaries for one UNet, `model.attention='plain'` for comparison,
   and the FLOPs (`cost_analysis`) and memory of one step next to those of
   CLIP ViT-L/14's text encoder on the same batch.

Compiles are slow on a CPU (minutes each); results are cached in
`--cache` (a JSON file) so reruns resume. Per-device batches left out of
`--batches` are interpolated linearly in the batch (marked in the table).
`--write` replaces the tables in docs/text_to_image.md; `--quick` compiles
one row (a smoke test). `--refine` compiles the refinement phase's step
(boot.refine) next to BOOT's for SD 1.5 at fsdp 1 and 8 and writes its
own table; `--remat` the BOOT step under each `model.remat` policy;
`--state` writes the state table alone (nothing compiled);
`--sdxl` SDXL's BOOT step at 1024 px (`--sdxl_rows`, fsdp x batch a
device: 4x2, 4x4, 8x2 and 8x4 by default). The state table has SDXL's
rows too, and SD 3.5 Medium's and Large's transformers (their folders'
configs; `models.mmdit`).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
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

from boot_jax import teachers  # noqa: E402
from boot_jax.config import (
  recipes,
)
from boot_jax.distill import state as state_lib  # noqa: E402
from boot_jax.models import clip_text, mmdit  # noqa: E402
from boot_jax.runtime import sharding  # noqa: E402
from boot_jax.teachers.sd import sd_teacher  # noqa: E402
from boot_jax.teachers.sd3 import loading as sd3_loading  # noqa: E402
from boot_jax.teachers.sdxl import sdxl_teacher  # noqa: E402
from boot_jax.training import trainer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import demo  # noqa: E402
import xla_memory  # noqa: E402

DOC = ROOT / "docs" / "text_to_image.md"
BEGIN = "<!-- sd memory: begin -->"
END = "<!-- sd memory: end -->"
XLA_BEGIN = "<!-- sd memory xla: begin -->"
XLA_END = "<!-- sd memory xla: end -->"
REFINE_BEGIN = "<!-- sd refine memory: begin -->"
REFINE_END = "<!-- sd refine memory: end -->"
REMAT_BEGIN = "<!-- sd remat memory: begin -->"
REMAT_END = "<!-- sd remat memory: end -->"
DATE = "2026-11-26"
MACHINE = "a 2-core CPU"
CACHE = "/tmp/boot_jax_sd_memory.json"

# name -> (UNet config, latent size, text width, prediction)
MODELS = {
  "SD 1.5 (512 px)": (
    xla_memory.SD15_UNET,
    64,
    768,
    "eps",
  ),
  "SD 2.1 (768 px)": (
    dict(
      xla_memory.SD_COMMON,
      sample_size=96,
      cross_attention_dim=1024,
      attention_head_dim=(5, 10, 20, 20),
      use_linear_projection=True,
    ),
    96,
    1024,
    "v",
  ),
}
SD15, SD21 = MODELS
# SDXL base 1.0's published UNet config (2.6B parameters): its condition is
# the packed text (77 x 2048) plus one row holding the 1280-wide pooled
# embedding (`sd_teacher.pack_pooled`).
SDXL = "SDXL (1024 px)"
XL_MODELS = {
  SDXL: (
    dict(
      in_channels=4,
      out_channels=4,
      sample_size=128,
      down_block_types=(
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
      ),
      up_block_types=(
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "UpBlock2D",
      ),
      block_out_channels=(320, 640, 1280),
      layers_per_block=2,
      attention_head_dim=(5, 10, 20),
      transformer_layers_per_block=(1, 2, 10),
      cross_attention_dim=2048,
      use_linear_projection=True,
      addition_embed_type="text_time",
      addition_time_embed_dim=256,
      projection_class_embeddings_input_dim=2816,
    ),
    128,
    2048,
    "eps",
  )
}
XL_POOLED = 1280
XL_ROWS = "4x2,4x4,8x2,8x4"  # fsdp x batch a device
# SD 3.5's transformers (their folders' config.json), for the state table.
SD35 = dict(
  sample_size=128,
  patch_size=2,
  in_channels=16,
  out_channels=16,
  attention_head_dim=64,
  joint_attention_dim=4096,
  pooled_projection_dim=2048,
  qk_norm="rms_norm",
)
SD3_MODELS = {
  "SD 3.5 Medium MMDiT": dict(
    SD35,
    num_layers=24,
    num_attention_heads=24,
    caption_projection_dim=1536,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
  ),
  "SD 3.5 Large MMDiT": dict(
    SD35,
    num_layers=38,
    num_attention_heads=38,
    caption_projection_dim=2432,
    pos_embed_max_size=192,
    dual_attention_layers=(),
  ),
}
MESHES = [(8, 1, 1), (2, 4, 1), (1, 8, 1)]
BATCHES = (4, 8, 16, 32)  # per device
FSDPS = (1, 4, 8)
TOKENS = xla_memory.TOKENS  # CLIP's context
# Card memory in bytes (as sold: GB = 1e9) and the share a run may plan
# for; the rest is headroom (the runtime, fragmentation, compiler
# differences).
CARDS = (
  ("H100 80 GB", 80e9),
  ("H200 141 GB", 141e9),
  ("TPU v5p 95 GB", 95e9),
  ("TPU v5e 16 GB", 16e9),
)
USABLE = 0.9
GIB = 2**30


def rows() -> list[str]:
  """The parameter-state table (shard shapes; activations excluded)."""
  out = []
  opt = optax.adamw(1e-5)
  networks = {}
  for name, (cfg, latent, width, _) in {**MODELS, **XL_MODELS}.items():
    module, shape = _module(cfg, width, latent * 8)
    networks[name] = nn.meta.unbox(
      sd_teacher.unet_params_abstract(module, (latent, latent, 4), shape)
    )
  for name, cfg in SD3_MODELS.items():
    networks[name] = sd3_loading.abstract_params(mmdit.MMDiT(cfg), cfg)
  for name, params in networks.items():
    state = jax.eval_shape(lambda p: state_lib.create(p, opt, True), params)
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    for mesh_shape in MESHES:
      mesh = sharding.make_mesh(
        ml_collections.ConfigDict(
          dict(zip(sharding.AXES, mesh_shape, strict=True))
        )
      )
      specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), state)
      sh = sharding.tree_shardings(state, specs, mesh, sharding.DEFAULT_RULES)
      tspecs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
      tsh = sharding.tree_shardings(
        params, tspecs, mesh, sharding.DEFAULT_RULES
      )
      gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
      student = sharding.shard_bytes(state, sh)
      teacher_fsdp = sharding.shard_bytes(params, tsh)
      teacher_rep = sharding.tree_bytes(params)
      out.append(
        f"| {name} | {n / 1e6:.0f}M | data={mesh_shape[0]} "
        f"fsdp={mesh_shape[1]} | {gib(student)} | {gib(teacher_rep)} | "
        f"{gib(teacher_fsdp)} |"
      )
      print(out[-1], flush=True)
  return out


# --------------------------------------------------------------------------
# XLA's accounting of the compiled BOOT step.


def _abstract_family(unet_config: dict, width: int):
  """A teacher family like `teachers.sd` whose `build` makes no weights.

  The teacher is `sd_teacher.build`'s, field by field, except that its
  parameters are ShapeDtypeStructs carrying the shardings the config's
  placement gives them: `trainer.setup` and the step's lowering read only
  their shapes and shardings.
  """

  def build(config, placement=None, dtype=None, attention="auto"):
    resolution = int(config.resolution)
    latent = resolution // 8  # SD's VAE factor
    sample_shape = (latent, latent, 4)
    module, shape = _module(unet_config, width, resolution, dtype, attention)
    condition = teachers.ConditionSpec("text", shape=shape)
    params = nn.meta.unbox(
      sd_teacher.unet_params_abstract(module, sample_shape, condition.shape)
    )
    specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
    params = xla_memory.placed_abstract(params, placement(params, specs))
    cls = sd_teacher.SDTeacher
    if module.micro is not None:
      cls = sdxl_teacher.SDXLTeacher
    return xla_memory.sd_teacher(
      module, params, config.prediction, sample_shape, shape, cls
    )

  return types.SimpleNamespace(build=build)


def _module(unet_config, width, resolution, dtype=None, attention="auto"):
  """The family's network and its condition's shape: SD's text, or SDXL's
  packed text and pooled embedding with the pipeline's default
  micro-conditioning at `resolution`."""
  micro = None
  shape = (TOKENS, width)
  if unet_config.get("addition_embed_type"):
    ids = (resolution, resolution, 0, 0, resolution, resolution)
    micro = (TOKENS, XL_POOLED, tuple(float(v) for v in ids))
    shape = (TOKENS + -(-XL_POOLED // width), width)
  module = sd_teacher.SDUNet(
    unet_config, dtype=dtype, attention=attention, micro=micro
  )
  return module, shape


def _model(name: str):
  return {**MODELS, **XL_MODELS}[name]


def step_config(
  model: str,
  resolution: int,
  fsdp: int,
  batch: int,
  attn,
  refine=False,
  remat="auto",
):
  """`sd_boot_config` as shipped; only the batch, mesh and shapes set
  (with `refine`, `boot.refine` on with its defaults; `remat`: another
  `model.remat` policy)."""
  _, _, _, prediction = _model(model)
  if model in XL_MODELS:
    c = recipes.sdxl_boot_config(resolution=resolution)
  else:
    c = recipes.sd_boot_config(resolution=resolution, prediction=prediction)
  c.boot.refine = refine
  c.teacher.name = "sd_abstract"
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, fsdp, 1
  c.train.batch_size = batch * fsdp
  c.model.attention = attn
  c.model.remat = remat
  return c


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def compile_step(
  model: str,
  resolution: int,
  fsdp: int,
  batch: int,
  attn: str = "auto",
  refine: bool = False,
  remat: str = "auto",
) -> dict:
  """Lowers and compiles the BOOT step (with `refine`, the refinement
  phase's step); XLA's bytes per device."""
  cfg, _, width, _ = _model(model)
  c = step_config(model, resolution, fsdp, batch, attn, refine, remat)
  family = _abstract_family(cfg, width)
  with mock.patch.dict(teachers.TEACHERS, {"sd_abstract": family}):
    s = trainer.setup(c)
  batch_in = xla_memory.abstract_batch(s)
  t0 = time.perf_counter()
  step = s.refine_step if refine else s.train_step
  lowered = step.lower(s.abstract_state(), s.teacher.params, batch_in)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  out = dict(
    xla_memory.memory(compiled),
    flops=_flops(compiled),
    lower_s=round(t1 - t0, 1),
    compile_s=round(t2 - t1, 1),
    num_params=s.num_params,
    cond_shape=list(batch_in["cond"].shape),
    eps_shape=list(batch_in["eps"].shape),
  )
  del compiled, lowered, s
  jax.clear_caches()
  gc.collect()
  return out


def compile_clip(batch: int) -> dict:
  """CLIP ViT-L/14's text encoder (SD 1.x's), forward on `batch` prompts,
  float32 as the SD teacher runs it (`models.clip_text`), on one
  device."""
  text_cfg = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=TOKENS,
    hidden_act="quick_gelu",
    eos_token_id=2,
  )
  text = clip_text.CLIPText(text_cfg)
  ids = jnp.zeros((1, 1), jnp.int32)
  params = nn.meta.unbox(
    jax.eval_shape(lambda: text.init(jax.random.key(0), ids))["params"]
  )

  def forward(params, ids):  # as the SD teacher's text_forward
    return text.apply({"params": params}, ids)["last_hidden_state"]

  t0 = time.perf_counter()
  compiled = (
    jax.jit(forward)
    .lower(params, jax.ShapeDtypeStruct((batch, TOKENS), jnp.int32))
    .compile()
  )
  out = dict(
    xla_memory.memory(compiled),
    flops=_flops(compiled),
    compile_s=round(time.perf_counter() - t0, 1),
    num_params=int(sum(math.prod(p.shape) for p in jax.tree.leaves(params))),
  )
  jax.clear_caches()
  return out


class Cache:
  """Results by key in a JSON file, written after each one."""

  def __init__(self, path: str):
    self.path = pathlib.Path(path)
    self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

  def get(self, key: str, fn, *args, **kwargs) -> dict:
    if key not in self.data:
      print(f"compiling {key} ...", flush=True)
      self.data[key] = fn(*args, **kwargs)
      tmp = self.path.with_suffix(".tmp")
      tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
      tmp.replace(self.path)
    r = self.data[key]
    print(
      f"{key}: total {r['total'] / GIB:.2f} GiB (args "
      f"{r['argument'] / GIB:.2f}, out {r['output'] / GIB:.2f}, temp "
      f"{r['temp'] / GIB:.2f}, alias {r['alias'] / GIB:.2f}), "
      f"{r['flops'] / 1e12:.2f} TFLOP, compile {r['compile_s']} s",
      flush=True,
    )
    return r


def step_key(model, resolution, fsdp, batch, attn="auto") -> str:
  return f"step|{model}|{resolution}px|fsdp={fsdp}|b={batch}|{attn}"


def _command(flag: str) -> str:
  """A section's opening: the command, the machine and the date."""
  return (
    f"Command: `python benchmarks/sd_memory.py {flag} --write` "
    f"({MACHINE}, 8 fake CPU devices, jax {jax.__version__}, "
    f"{datetime.date.today().isoformat()})."
  )


def refine_section(cache: Cache) -> str:
  """The refinement step's bytes per device next to BOOT's (SD 1.5)."""
  gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
  lines = [
    REFINE_BEGIN,
    _command("--refine") + " As the table above, for the "
    "refinement phase's step (`configs/sd15.py` with `boot.refine=true` "
    "and its defaults: teacher and fake network both guided at 7.5) next "
    "to BOOT's step on the same mesh and batch, GiB per device.",
    "",
    "| step | fsdp | batch / device | arguments | outputs | temporaries | "
    "aliased | total |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for fsdp in (1, 8):
    for refine in (False, True):
      key = step_key(SD15, 512, fsdp, 4) + ("|refine" if refine else "")
      r = cache.get(
        key, compile_step, SD15, 512, fsdp, 4, "auto", refine=refine
      )
      lines.append(
        f"| {'refinement' if refine else 'BOOT'} | {fsdp} | 4 | "
        f"{gib(r['argument'])} | {gib(r['output'])} | {gib(r['temp'])} | "
        f"{gib(r['alias'])} | **{gib(r['total'])}** |"
      )
  lines += [
    "",
    "The refinement's state adds the fake network (the teacher's size, "
    "float32) and two Adams to BOOT's; its step runs the student twice "
    "(once without gradient, for the fake network's batch), the fake "
    "network on 2 inputs per example (conditional and null) for its own "
    "loss and on 2 for the student's, and the teacher on 2; the student's "
    "loss is backpropagated through both networks to their inputs. CPU "
    "buffer assignment, as above: an estimate for the cards.",
    REFINE_END,
  ]
  return "\n".join(lines) + "\n"


def remat_section(cache: Cache) -> str:
  """The BOOT step under each `model.remat` policy (SD 1.5, fsdp 1)."""
  gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
  lines = [
    REMAT_BEGIN,
    _command("--remat") + " The BOOT step of "
    "`configs/sd15.py` at 512 px, fsdp 1, batch 4 a device, under each "
    "`model.remat` policy of the student (the shipped config's 'auto' is "
    "'block'), GiB per device, and XLA's flop count of the step.",
    "",
    "| model.remat | arguments | outputs | temporaries | total | "
    "temporaries / example | TFLOP |",
    "|---|---|---|---|---|---|---|",
  ]
  for policy in ("none", "block", "dots"):
    key = step_key(SD15, 512, 1, 4) + f"|remat={policy}"
    r = cache.get(key, compile_step, SD15, 512, 1, 4, "auto", remat=policy)
    lines.append(
      f"| {policy} | {gib(r['argument'])} | {gib(r['output'])} | "
      f"{gib(r['temp'])} | **{gib(r['total'])}** | {gib(r['temp'] / 4)} | "
      f"{r['flops'] / 1e12:.2f} |"
    )
  lines.append(REMAT_END)
  return "\n".join(lines) + "\n"


SDXL_BEGIN = "<!-- sdxl memory: begin -->"
SDXL_END = "<!-- sdxl memory: end -->"


def sdxl_section(cache: Cache, rows: str = XL_ROWS) -> str:
  """SDXL's BOOT step at 1024 px (`configs/sdxl.py` as shipped) for each
  `fsdp x batch` of `rows`, against the 80 GB card."""
  gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
  lines = [
    SDXL_BEGIN,
    _command("--sdxl" + ("" if rows == XL_ROWS else f" --sdxl_rows {rows}"))
    + " The BOOT step of `configs/sdxl.py` as shipped "
    "(1024 px, 128x128 latents, bf16 compute, remat, guidance inside the "
    "teacher, EMA) around SDXL base's UNet (2.6B parameters), GiB per "
    "device; 'fits 80 GB' holds when the total is at most 90% of 80e9 "
    "bytes (the headroom of the tables above).",
    "",
    "| fsdp | batch / device | arguments | outputs | temporaries | total | "
    "temporaries / example | fits 80 GB | compile s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows.split(","):
    fsdp, b = (int(v) for v in row.split("x"))
    key = step_key(SDXL, 1024, fsdp, b)
    r = cache.get(key, compile_step, SDXL, 1024, fsdp, b)
    fits = "yes" if r["total"] <= USABLE * 80e9 else "no"
    lines.append(
      f"| {fsdp} | {b} | {gib(r['argument'])} | {gib(r['output'])} | "
      f"{gib(r['temp'])} | **{gib(r['total'])}** | {gib(r['temp'] / b)} | "
      f"{fits} | {r['compile_s']:.0f} |"
    )
  lines.append(SDXL_END)
  return "\n".join(lines) + "\n"


def _interpolate(measured: dict, batch: int) -> dict:
  """A row at `batch` from the nearest measured batches around it,
  linear in the batch (per field)."""
  lo = max(b for b in measured if b < batch)
  hi = min(b for b in measured if b > batch)
  f = (batch - lo) / (hi - lo)
  return {
    k: measured[lo][k] + f * (measured[hi][k] - measured[lo][k])
    for k in ("argument", "output", "temp", "alias", "total")
  }


def grid(cache: Cache, batches) -> dict:
  """(model, fsdp, batch) -> (row, measured?) for the full grid."""
  out = {}
  for model, (_, latent, _, _) in MODELS.items():
    for fsdp in FSDPS:
      measured = {
        b: cache.get(
          step_key(model, latent * 8, fsdp, b),
          compile_step,
          model,
          latent * 8,
          fsdp,
          b,
        )
        for b in batches
      }
      for b in BATCHES:
        if b in measured:
          out[model, fsdp, b] = (measured[b], True)
        else:
          out[model, fsdp, b] = (_interpolate(measured, b), False)
  return out


def largest_batches(table: dict) -> list[str]:
  """Per card and model: the largest per-device batch that fits, by fsdp,
  and the mesh to use."""
  lines = []
  for card, capacity in CARDS:
    cells = [card]
    for model in MODELS:
      best = None
      parts = []
      for fsdp in FSDPS:
        fits = [
          b
          for b in BATCHES
          if table[model, fsdp, b][0]["total"] <= USABLE * capacity
        ]
        b = max(fits) if fits else None
        parts.append(f"{b or '-'}")
        # The smallest fsdp that reaches the largest batch: the least
        # parameter traffic for the same memory.
        if b is not None and (best is None or b > best[1]):
          best = (fsdp, b)
      cells.append(" / ".join(parts))
      cells.append(
        "does not fit" if best is None else f"fsdp={best[0]}, batch {best[1]}"
      )
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def xla_section(cache: Cache, batches, command: str) -> str:
  """The markdown of the XLA measurements (runs whatever is not cached)."""
  table = grid(cache, batches)
  gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
  lines = [
    XLA_BEGIN,
    f"Command: `{command}` ({MACHINE}, 8 fake CPU devices, jax "
    f"{jax.__version__}, {DATE}). XLA's `compiled.memory_analysis()` of the "
    "real BOOT step (`configs/sd15.py` / `configs/sd21.py` as shipped: bf16 "
    "compute, remat, guidance 7.5 inside the teacher, AdamW + EMA; "
    "`model.attention=auto`, which is `chunked` on a CPU), GiB per device; "
    "data=1, tensor=1, global batch = per-device batch x fsdp. Total = "
    "arguments + outputs + temporaries - aliased (the donated state). "
    "Rows marked * are interpolated linearly in the batch between measured "
    "rows.",
    "",
    "| UNet | fsdp | batch / device | arguments | outputs | temporaries | "
    "aliased | total | compile s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for (model, fsdp, b), (r, measured) in table.items():
    lines.append(
      f"| {model} | {fsdp} | {b}{'' if measured else ' *'} | "
      f"{gib(r['argument'])} | {gib(r['output'])} | {gib(r['temp'])} | "
      f"{gib(r['alias'])} | **{gib(r['total'])}** | "
      f"{r['compile_s'] if measured else '-'} |"
    )
  slopes = [
    (table[m, 8, BATCHES[-1]][0]["temp"] - table[m, 8, BATCHES[0]][0]["temp"])
    / (BATCHES[-1] - BATCHES[0])
    for m in MODELS
  ]
  lines += [
    "",
    "Each example runs the teacher on 4 inputs (guided, with the boundary "
    "point) and the student on 3 (one without gradient, two with), so the "
    "temporaries grow by about "
    f"{gib(slopes[0])} GiB (SD 1.5) and {gib(slopes[1])} GiB (SD 2.1) per "
    "example per device (fsdp 8), while fsdp shrinks only the state.",
  ]
  # 512 -> 768 px on one UNet.
  lo = cache.get(step_key(SD21, 512, 8, 4), compile_step, SD21, 512, 8, 4)
  hi = table[SD21, 8, 4][0]
  ratio = hi["temp"] / lo["temp"]
  lines += [
    "",
    "512 -> 768 px on SD 2.1's UNet (fsdp 8, batch 4 per device): "
    f"temporaries {gib(lo['temp'])} -> {gib(hi['temp'])} GiB, "
    f"**{ratio:.2f}x** for {96**2 / 64**2:.2f}x the latent tokens (bound: "
    f"1.2 x 2.25 = 2.7x); totals {gib(lo['total'])} -> "
    f"{gib(hi['total'])} GiB.",
  ]
  # Attention: plain vs chunked.
  plain = cache.get(
    step_key(SD15, 512, 8, 4, "plain"), compile_step, SD15, 512, 8, 4, "plain"
  )
  auto = table[SD15, 8, 4][0]
  lines += [
    "",
    "`model.attention=plain` (the full score matrix), SD 1.5, fsdp 8, batch "
    f"4: temporaries {gib(plain['temp'])} GiB vs {gib(auto['temp'])} with "
    f"`chunked` (totals {gib(plain['total'])} vs {gib(auto['total'])}).",
  ]
  # Step FLOPs and CLIP.
  step = cache.get(step_key(SD15, 512, 1, 4), compile_step, SD15, 512, 1, 4)
  step_plain = cache.get(
    step_key(SD15, 512, 1, 4, "plain"), compile_step, SD15, 512, 1, 4, "plain"
  )
  clip = cache.get("clip|b=4", compile_clip, 4)
  lines += [
    "",
    "FLOPs (`compiled.cost_analysis()`), SD 1.5, fsdp 1, batch 4: one BOOT "
    f"step {step_plain['flops'] / 1e12:.1f} TFLOP with `plain` attention "
    f"({step['flops'] / 1e12:.1f} with `chunked`, whose query-block loop "
    "XLA counts once, not per block). CLIP ViT-L/14's text encoder on the "
    f"same 4 prompts (float32): {clip['flops'] / 1e9:.0f} GFLOP "
    f"({100 * clip['flops'] / step_plain['flops']:.2f}% of the step), "
    f"{gib(clip['total'])} GiB per device (parameters "
    f"{gib(clip['argument'])}, temporaries {gib(clip['temp'])}): encoding "
    "the prompts on the devices ('online') adds about that to the step's "
    f"{gib(step['total'])} GiB and {clip['flops'] / 1e9:.0f} GFLOP to its "
    f"{step_plain['flops'] / 1e12:.1f} TFLOP.",
    "",
    f"Largest per-device batch (of {', '.join(map(str, BATCHES))}) whose "
    f"total is at most {USABLE:.0%} of the card (GB = 1e9 bytes; the "
    "rest is headroom), by fsdp 1 / 4 / 8 ('-': not even 4), read from the "
    "table above (interpolated rows included), and the mesh to use: the "
    "smallest fsdp that reaches that batch, data taking the other devices "
    "(parameters are never split over data, so a device's bytes do not "
    "depend on it):",
    "",
    f"| card | {SD15}: fsdp 1 / 4 / 8 | mesh | {SD21}: fsdp 1 / 4 / 8 | mesh |",
    "|---|---|---|---|---|",
    *largest_batches(table),
    "",
    "These are the CPU backend's buffer assignment: GPU and TPU compilers "
    "fuse and schedule differently, and cuDNN or Pallas flash attention "
    "replaces `chunked` there, so they are estimates, not measurements on "
    "the cards.",
    XLA_END,
  ]
  return "\n".join(lines) + "\n"


def state_section() -> str:
  return (
    "\n".join(
      [
        BEGIN,
        "Command: `python benchmarks/sd_memory.py --state --write` (shard "
        f"shapes on 8 fake CPU devices, jax {jax.__version__}, "
        f"{datetime.date.today().isoformat()}). GiB per device, float32, "
        "activations excluded.",
        "",
        "| network | params | mesh | student params + AdamW + EMA | teacher "
        "replicated | teacher over fsdp |",
        "|---|---|---|---|---|---|",
        *rows(),
        END,
      ]
    )
    + "\n"
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--write", action="store_true", help="update the doc")
  p.add_argument("--quick", action="store_true", help="compile one row")
  p.add_argument(
    "--batches",
    default=",".join(map(str, BATCHES)),
    help="per-device batches to compile (the others are interpolated)",
  )
  p.add_argument("--cache", default=CACHE, help="JSON file of results")
  p.add_argument(
    "--refine",
    action="store_true",
    help="only the refinement phase's step next to BOOT's (SD 1.5)",
  )
  p.add_argument(
    "--remat",
    action="store_true",
    help="only the BOOT step under each model.remat policy (SD 1.5)",
  )
  p.add_argument(
    "--sdxl",
    action="store_true",
    help="only SDXL's BOOT step at 1024 px per fsdp and batch",
  )
  p.add_argument(
    "--state",
    action="store_true",
    help="only the parameter-state table (shard shapes; nothing compiled)",
  )
  p.add_argument(
    "--sdxl_rows",
    default=XL_ROWS,
    help="with --sdxl: the fsdp x per-device batch rows to compile",
  )
  args = p.parse_args()
  cache = Cache(args.cache)
  for wanted, section, begin, end in (
    (
      args.sdxl,
      functools.partial(sdxl_section, rows=args.sdxl_rows),
      SDXL_BEGIN,
      SDXL_END,
    ),
    (args.remat, remat_section, REMAT_BEGIN, REMAT_END),
    (args.refine, refine_section, REFINE_BEGIN, REFINE_END),
  ):
    if not wanted:
      continue
    text = section(cache)
    print(text)
    if args.write:
      doc = DOC.read_text()
      if begin not in doc:  # its place: after the XLA section
        DOC.write_text(doc.replace(XLA_END + "\n", XLA_END + "\n\n" + text))
      demo.write_section(DOC, text, begin, end)
    return
  if args.quick:
    cache.get(step_key(SD15, 512, 1, 4), compile_step, SD15, 512, 1, 4)
    return
  if args.state:
    state = state_section()
    print(state)
    if args.write:
      demo.write_section(DOC, state, BEGIN, END)
    return
  batches = sorted(int(b) for b in args.batches.split(","))
  if batches[0] != BATCHES[0] or batches[-1] != BATCHES[-1]:
    raise SystemExit(f"--batches must include {BATCHES[0]} and {BATCHES[-1]}")
  state = state_section()
  command = "python benchmarks/sd_memory.py --write"
  if args.batches != p.get_default("batches"):
    command += f" --batches {args.batches}"
  xla = xla_section(cache, batches, command)
  print(xla)
  if args.write:
    demo.write_section(DOC, state, BEGIN, END)
    text = DOC.read_text()
    if XLA_BEGIN not in text:  # its place: right after the state table
      DOC.write_text(text.replace(END + "\n", state[-len(END) - 1 :] + xla))
    demo.write_section(DOC, xla, XLA_BEGIN, XLA_END)


if __name__ == "__main__":
  main()
