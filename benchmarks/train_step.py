r"""Times the BOOT train step against the sum of its parts.

    python benchmarks/train_step.py --model digits [--batch 32] [--write]
    python benchmarks/train_step.py --model sd15 --batch 8 \
      --dtype bfloat16 --write      # an accelerator: images/s and MFU

The parts, each jitted and timed alone on the same batch: the teacher's
forward pass (its guided x0-prediction), the student's forward pass, and
the student's forward and backward pass. The BOOT step does exactly these
three plus the optimizer update, so `step / sum(parts)` measures what the
step adds on top (the bar: <= 1.10). On an accelerator it also reports
images/s and the model FLOP utilisation: XLA's FLOP count of the compiled
step over its time, against the card's peak dense rate for the dtype.

Models: 'digits' is the demo's UNet (configs/digits_teacher.py's network,
random weights); 'sd15' is our UNet at Stable Diffusion 1.5's widths
(320, 640, 1280, 1280; self-attention at the three finest latent levels;
64x64x4 latents), random weights. `--write` replaces the train-step
section of docs/BENCHMARKS.md with the table, the command, the machine
and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

import demo  # noqa: E402  (write_section)
import jax
import jax.numpy as jnp
import ml_collections

from boot_jax.config import defaults, recipes
from boot_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# One section per model and platform, so a GPU run keeps the CPU table.
BEGIN = "<!-- train_step {model} {platform}: begin -->"
END = "<!-- train_step {model} {platform}: end -->"

# Peak dense matrix rates (FLOP/s) by device kind and dtype, from the
# vendors' data sheets (H100/H200 SXM; TPU v4, v5e).
PEAK_FLOPS = {
  ("NVIDIA H100 80GB HBM3", "bfloat16"): 989e12,
  ("NVIDIA H100 80GB HBM3", "float32"): 67e12,
  ("NVIDIA H200", "bfloat16"): 989e12,
  ("NVIDIA H200", "float32"): 67e12,
  ("TPU v4", "bfloat16"): 275e12,
  ("TPU v5 lite", "bfloat16"): 197e12,
}


def model_config(name: str) -> tuple[dict, list[int], str, dict]:
  """(UNet config, sample shape, prediction, schedule) of a benchmark model."""
  if name == "digits":
    t = recipes.digits_teacher_config()
    size = t.data.image_size
    return (
      t.model.to_dict(),
      [size, size, t.data.channels],
      t.diffusion.prediction,
      t.diffusion.schedule.to_dict(),
    )
  if name == "sd15":
    model = dict(
      name="unet",
      channels=320,
      channel_mult=(1, 2, 4, 4),
      num_res_blocks=2,
      attention_resolutions=(64, 32, 16),
      num_heads=8,
      groups=32,
    )
    schedule = defaults.discrete_schedule(
      "scaled_linear", beta_start=0.00085, beta_end=0.012
    ).to_dict()
    return model, [64, 64, 4], "eps", schedule
  raise ValueError(f"unknown --model {name!r}; expected digits or sd15")


def boot_config(args) -> ml_collections.ConfigDict:
  model, shape, prediction, schedule = model_config(args.model)
  c = defaults.base_config()
  c.teacher = recipes.random_unet_teacher(
    model, shape, prediction, ml_collections.ConfigDict(schedule)
  )
  c.student.init = "teacher"
  c.boot.num_steps = 16
  c.boot.boundary_weight = 0.0  # as configs/digits.py
  c.train.batch_size = args.batch
  c.train.steps = 10**6
  c.train.compute_dtype = args.dtype
  c.train.remat = args.remat
  c.mesh.data = args.devices
  return c


def timed(fn, *args, repeats: int) -> float:
  """Median seconds of `fn(*args)` after two warm-up calls (compilation)."""
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure(args) -> dict:
  s = trainer.setup(boot_config(args))
  state = s.init_state()
  batch = s.draw(0, 0)
  teacher, student = s.teacher, s.student
  guidance = s.config.boot.get("guidance")
  x_t = batch["eps"]
  t = batch["t"]

  teacher_fwd = jax.jit(lambda tp, x, t: teacher.x0(tp, x, t, None, guidance))
  student_fwd = jax.jit(lambda p, e, t: student.apply(p, e, t))
  student_bwd = jax.jit(
    jax.value_and_grad(lambda p, e, t: jnp.mean(student.apply(p, e, t) ** 2))
  )
  parts = dict(
    teacher_forward=timed(
      teacher_fwd, teacher.params, x_t, t, repeats=args.repeats
    ),
    student_forward=timed(
      student_fwd, state.params, batch["eps"], t, repeats=args.repeats
    ),
    student_forward_backward=timed(
      student_bwd, state.params, batch["eps"], t, repeats=args.repeats
    ),
  )

  holder = [state]

  def step():
    holder[0], m = s.train_step(holder[0], teacher.params, batch)
    return m["loss"]

  step_time = timed(step, repeats=args.repeats)
  compiled = s.train_step.lower(holder[0], teacher.params, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  device = jax.devices()[0]
  peak = PEAK_FLOPS.get((device.device_kind, args.dtype))
  total_parts = sum(parts.values())
  return dict(
    parts=parts,
    step=step_time,
    ratio=step_time / total_parts,
    images_per_s=args.batch / step_time,
    flops=flops,
    tflops_per_s=flops / step_time / 1e12,
    mfu=(flops / step_time / peak) if peak else None,
    device=f"{device.device_kind} x{s.mesh.devices.size}",
    platform=device.platform,
    params=s.num_params,
    traces=len(s.traces),
  )


def table(args, r: dict) -> list[str]:
  ms = lambda v: f"{1e3 * v:.1f}"  # noqa: E731
  mfu = (
    "n/a (no peak for this device)"
    if r["mfu"] is None
    else (f"{100 * r['mfu']:.1f}%")
  )
  return [
    f"| {args.model} | {r['params'] / 1e6:.1f}M | {args.batch} | "
    f"{args.dtype}{' + remat' if args.remat else ''} | {r['device']} | "
    f"{ms(r['parts']['teacher_forward'])} | "
    f"{ms(r['parts']['student_forward'])} | "
    f"{ms(r['parts']['student_forward_backward'])} | {ms(r['step'])} | "
    f"**{r['ratio']:.3f}** | {r['images_per_s']:.1f} | "
    f"{r['tflops_per_s']:.2f} | {mfu} |"
  ]


def section(args, r: dict, begin: str, end: str) -> str:
  command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
  return (
    "\n".join(
      [
        begin,
        "## The BOOT train step against the sum of its parts: "
        f"{args.model} on {r['platform']}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, {r['device']}. Date: "
        f"{datetime.date.today().isoformat()}.",
        "",
        "Times are medians over the repeats after compilation, in ms. Parts: "
        "teacher forward, student forward, student forward+backward, each "
        "jitted alone on the step's batch. Ratio = step / sum of parts (bar "
        "<= 1.10). MFU = XLA's FLOP count of the step / step time / the "
        "card's peak dense rate.",
        "",
        "| model | student params | batch | compute | device | teacher fwd |"
        " student fwd | student fwd+bwd | BOOT step | ratio | images/s |"
        " TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *table(args, r),
        "",
        end,
      ]
    )
    + "\n"
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="digits", choices=["digits", "sd15"])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--remat", action="store_true")
  p.add_argument("--devices", type=int, default=1, help="mesh data size")
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
  args = p.parse_args()
  r = measure(args)
  print("\n".join(table(args, r)))
  print(
    f"ratio {r['ratio']:.3f} (bar <= 1.10); step traced {r['traces']} time(s)"
  )
  if args.write:
    keys = dict(model=args.model, platform=r["platform"])
    begin, end = BEGIN.format(**keys), END.format(**keys)
    demo.write_section(
      ROOT / "docs" / "BENCHMARKS.md", section(args, r, begin, end), begin, end
    )


if __name__ == "__main__":
  main()
