r"""One script for an accelerator: SD 1.5's BOOT step and sampling latency.

    python benchmarks/accelerator.py [--write]   # a GPU or TPU: ~5 minutes
    python benchmarks/accelerator.py --write     # a CPU: the CPU-side rows
    python benchmarks/accelerator.py --tiny      # a smoke run, any machine

Builds `configs/sd15.py` as shipped (512 px, bf16 compute, `model.remat`
auto, guidance 7.5 inside the teacher, EMA) around our Stable Diffusion
UNet at SD 1.5's published config with random weights (no folder, no
download; random text embeddings stand for the prompts: the step's cost
does not depend on their values), over every local device (data
parallel). For a per-device batch of 4 and 8 it prints:

- XLA's memory analysis of the compiled BOOT step on the device (bytes
  per device: arguments, outputs, temporaries) and its flop count;
- the step's median time after compilation, images/s, achieved TFLOP/s
  (XLA's flops / step time) and MFU (TFLOP/s / the card's bf16 peak,
  `train_step.PEAK_FLOPS`);

and the latency of the one-step student against the teacher's guided
DDIM-50 (w = 7.5, both branches in one batched call) at batch 1 and 8,
latents only (the VAE decode, the same for both, is left out).

On a CPU only the compile-side columns are filled (timings there say
nothing about a card) and the others read "not measured"; `--tiny` runs
everything, timings included, on a two-level UNet at 64 px, to check the
script itself. `--write` replaces the section of docs/BENCHMARKS.md for
this platform, with the command, the device and the date.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import pathlib
import statistics
import sys
import time
import types
from unittest import mock

import demo  # noqa: E402  (write_section)
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import train_step  # noqa: E402  (PEAK_FLOPS)
import xla_memory  # noqa: E402

from boot_jax import teachers
from boot_jax.config import recipes
from boot_jax.teachers.sd import sd_teacher
from boot_jax.training import loop, trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN = "<!-- accelerator {platform}: begin -->"
END = "<!-- accelerator {platform}: end -->"
GIB = 2**30
TINY_UNET = dict(
  in_channels=4,
  out_channels=4,
  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
  block_out_channels=(32, 64),
  layers_per_block=1,
  cross_attention_dim=32,
  attention_head_dim=2,
)


def random_family(unet_config: dict, materialize: bool = True):
  """A teacher family like `teachers.sd` with random UNet weights (or,
  without `materialize`, ShapeDtypeStructs of them: enough to compile)
  and zero prompt embeddings (`xla_memory.NoPrompts`)."""
  width = int(unet_config["cross_attention_dim"])

  def build(config, placement=None, dtype=None, attention="auto"):
    latent = int(config.resolution) // 8  # SD's VAE factor
    sample_shape = (latent, latent, 4)
    shape = (xla_memory.TOKENS, width)
    module = sd_teacher.SDUNet(unet_config, dtype=dtype, attention=attention)
    x = jnp.zeros((1,) + sample_shape, jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    c = jnp.zeros((1,) + shape, jnp.float32)
    init = functools.partial(module.init, jax.random.key(0), x, t, c)
    if not materialize:
      params = nn.meta.unbox(jax.eval_shape(init)["params"])
      specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
      params = xla_memory.placed_abstract(params, placement(params, specs))
    else:
      params = nn.meta.unbox(jax.jit(init)()["params"])
      if placement is not None:
        specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
        params = jax.device_put(params, placement(params, specs))
    return xla_memory.sd_teacher(
      module,
      params,
      config.prediction,
      sample_shape,
      shape,
      sd_teacher.SDTeacher,
    )

  return types.SimpleNamespace(build=build)


def setup(per_device: int, tiny: bool, materialize: bool = True):
  """`configs/sd15.py` as shipped around the random UNet, batch
  `per_device` on every local device."""
  c = recipes.sd_boot_config(resolution=64 if tiny else 512, prediction="eps")
  c.teacher.name = "sd_random"
  c.train.batch_size = per_device * jax.device_count()
  c.mesh.data, c.mesh.fsdp = -1, 1
  family = random_family(
    TINY_UNET if tiny else xla_memory.SD15_UNET, materialize
  )
  with mock.patch.dict(teachers.TEACHERS, {"sd_random": family}):
    return trainer.setup(c)


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `fn()` (blocked on) after two warm-up calls."""
  for _ in range(2):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def step_row(per_device: int, timed: bool, repeats: int, tiny: bool, log):
  """The compiled step's memory and flops (and, when `timed`, its time);
  untimed, nothing is allocated: the step is compiled from shapes."""
  s = setup(per_device, tiny, materialize=timed)
  if timed:
    state, batch = s.init_state(), s.draw(0, 0)
  else:
    state, batch = s.abstract_state(), xla_memory.abstract_batch(s)
  t0 = time.perf_counter()
  compiled = s.train_step.lower(state, s.teacher.params, batch).compile()
  log(f"batch {per_device}/device: compiled in {time.perf_counter() - t0:.0f}s")
  row = dict(
    xla_memory.memory(compiled),
    flops=flops_of(compiled),
    per_device=per_device,
    step=None,
  )
  if timed:
    holder = [state]

    def step():
      holder[0], metrics = compiled(holder[0], s.teacher.params, batch)
      return metrics["loss"]

    row["step"] = median_seconds(step, repeats)
    log(f"batch {per_device}/device: step {1e3 * row['step']:.1f} ms")
  return s, holder[0] if timed else state, row


def latency_rows(s, state, repeats: int, log) -> list[dict]:
  """One-step student vs the teacher's DDIM-50 at w = 7.5, batch 1 and 8."""
  teacher, student = s.teacher, s.student
  ts = teacher.ddim_timesteps(50)
  params = loop.params_for_sampling(state)
  one = jax.jit(lambda p, e, c: student.generate(p, e, c))
  ddim = jax.jit(lambda p, e, c: teacher.ddim(p, e, ts, c, 7.5))
  rows = []
  for b in (1, 8):
    rng = np.random.default_rng(b)
    eps = jnp.asarray(rng.standard_normal((b,) + teacher.sample_shape))
    cond = jnp.zeros((b,) + tuple(teacher.condition.shape), jnp.float32)
    for name, fn, p in (
      ("student, 1 step", one, params),
      ("teacher, DDIM-50 at w = 7.5", ddim, teacher.params),
    ):
      sec = median_seconds(functools.partial(fn, p, eps, cond), repeats)
      rows.append(dict(sampler=name, batch=b, seconds=sec))
      log(f"{name}, batch {b}: {1e3 * sec:.1f} ms")
  return rows


def tables(rows, latency, device: str, peak) -> list[str]:
  gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
  nm = "not measured"
  out = [
    "| batch / device | device | arguments GiB | outputs GiB | temporaries "
    "GiB | total GiB | TFLOP / step | step ms | images/s | TFLOP/s | MFU |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    tflops = r["flops"] / 1e12
    step, rate, per_s, mfu = nm, nm, nm, nm
    if r["step"] is not None:
      step = f"{1e3 * r['step']:.1f}"
      rate = f"{r['per_device'] * jax.device_count() / r['step']:.1f}"
      per_s = f"{tflops / r['step']:.1f}"
      mfu = "n/a (no peak for this device)"
      if peak:
        mfu = f"{100 * tflops * 1e12 / r['step'] / peak:.1f}%"
    out.append(
      f"| {r['per_device']} | {device} | {gib(r['argument'])} | "
      f"{gib(r['output'])} | {gib(r['temp'])} | **{gib(r['total'])}** | "
      f"{tflops:.2f} | {step} | {rate} | {per_s} | {mfu} |"
    )
  out += ["", "| sampler | batch | ms | images/s |", "|---|---|---|---|"]
  if not latency:
    out.append(
      f"| student, 1 step; teacher, DDIM-50 at w = 7.5 | 1, 8 | {nm} | {nm} |"
    )
  for r in latency:
    out.append(
      f"| {r['sampler']} | {r['batch']} | {1e3 * r['seconds']:.1f} | "
      f"{r['batch'] / r['seconds']:.1f} |"
    )
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tiny", action="store_true", help="a smoke run (tiny UNet)")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
  args = p.parse_args()
  start = time.perf_counter()

  def log(line):
    print(f"[{time.perf_counter() - start:5.0f}s] {line}", flush=True)

  device = jax.devices()[0]
  accelerator = device.platform != "cpu"
  timed = accelerator or args.tiny
  kind = f"{device.device_kind} x{jax.device_count()}"
  log(f"{kind}: SD 1.5 BOOT step, configs/sd15.py as shipped")
  rows = []
  for per_device in (2,) if args.tiny else (4, 8):
    s, state, row = step_row(per_device, timed, args.repeats, args.tiny, log)
    rows.append(row)
  latency = latency_rows(s, state, args.repeats, log) if timed else []
  peak = train_step.PEAK_FLOPS.get((device.device_kind, "bfloat16"))
  lines = tables(rows, latency, kind, peak)
  print("\n".join(lines))
  log("done")
  if args.write:
    command = "python benchmarks/accelerator.py " + " ".join(sys.argv[1:])
    keys = dict(platform=device.platform + ("-tiny" if args.tiny else ""))
    begin, end = BEGIN.format(**keys), END.format(**keys)
    text = "\n".join(
      [
        begin,
        f"Command: `{command}` on {kind}, jax {jax.__version__}, "
        f"{datetime.date.today().isoformat()}; "
        f"{time.perf_counter() - start:.0f} s in all.",
        "",
        *lines,
        end,
      ]
    )
    demo.write_section(ROOT / "docs" / "BENCHMARKS.md", text + "\n", begin, end)


if __name__ == "__main__":
  main()
