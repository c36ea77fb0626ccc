r"""Bytes per device of the BOOT state under several meshes.

    python benchmarks/memory.py [--write]

Runs on 8 fake CPU devices. For the demo's UNet the state is built for
real (abstract first, one jitted init with out_shardings) and its bytes are
read from each array's addressable shards. For our UNet at Stable Diffusion
1.5's widths the state is only traced (jax.eval_shape) and the bytes per
device come from each sharding's shard shape, which is what the arrays
would hold. `--write` replaces the memory section of docs/scaling.md.
"""

from __future__ import annotations

import argparse  # noqa: E402
import datetime  # noqa: E402
import os
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import demo  # noqa: E402
import jax  # noqa: E402
import train_step  # noqa: E402

from boot_jax.runtime import sharding
from boot_jax.training import trainer

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

BEGIN = "<!-- memory: begin -->"
END = "<!-- memory: end -->"
MESHES = [(1, 8, 1), (2, 4, 1), (8, 1, 1), (1, 4, 2)]


def row(model: str, mesh, build: bool) -> str:
  args = argparse.Namespace(
    model=model, batch=8, dtype="float32", remat=False, devices=1
  )
  c = train_step.boot_config(args)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  c.optim.ema_decay = 0.999
  c.sharding.teacher = "fsdp"
  s = trainer.setup(c)
  abstract = s.abstract_state()
  total = sharding.tree_bytes(dict(p=abstract.params, o=abstract.opt_state))
  if build:
    state = s.init_state()
    owned = dict(p=state.params, o=state.opt_state)
    per = max(sharding.bytes_per_device(owned).values())
    ema = max(sharding.bytes_per_device(state.ema_params).values())
    how = "measured (addressable shards)"
  else:
    owned = dict(p=abstract.params, o=abstract.opt_state)
    per = sharding.shard_bytes(owned, jax.tree.map(lambda a: a.sharding, owned))
    ema = sharding.shard_bytes(
      abstract.ema_params,
      jax.tree.map(lambda a: a.sharding, abstract.ema_params),
    )
    how = "from shard shapes"
  teacher = max(sharding.bytes_per_device(s.teacher.params).values())
  mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
  return (
    f"| {model} | {s.num_params / 1e6:.1f}M | data={mesh[0]} fsdp={mesh[1]} "
    f"tensor={mesh[2]} | {mib(total)} | {mib(per)} | "
    f"{per / (total / 8):.3f} | {mib(ema)} | {mib(teacher)} | {how} |"
  )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--write", action="store_true")
  p.add_argument("--models", default="digits,sd15")
  p.add_argument("--row", help="MODEL:D,F,T: print one row (internal)")
  args = p.parse_args()
  if args.row:
    model, mesh = args.row.split(":")
    mesh = tuple(int(v) for v in mesh.split(","))
    print(row(model, mesh, build=model == "digits"), flush=True)
    return
  rows = []
  for model in args.models.split(","):
    for mesh in MESHES:
      if model == "sd15" and mesh[1] * mesh[2] == 1:
        # Eight whole copies of the 2.4 GiB teacher do not fit this host's
        # memory; with no fsdp every device holds the whole state anyway.
        continue
      # One process per row: the SD-sized teacher is a real 2.4 GiB array,
      # and a fresh process frees it (and its compilations) for the next.
      spec = f"{model}:{','.join(map(str, mesh))}"
      out = subprocess.run(
        [sys.executable, __file__, "--row", spec],
        capture_output=True,
        text=True,
        check=True,
      ).stdout
      rows.append(out.strip().splitlines()[-1])
      print(rows[-1], flush=True)
  if args.write:
    text = "\n".join(
      [
        BEGIN,
        "## Memory per device, measured",
        "",
        "Command: `python benchmarks/memory.py --write` (8 fake CPU "
        f"devices, jax {jax.__version__}, {datetime.date.today()}).",
        "",
        "Params + opt: the student's parameters and AdamW moments (float32); "
        "'per device' is the largest device's share and 'x 1/8' that share "
        "over an eighth of the total (1.000 = perfectly even FSDP). EMA and "
        "the frozen teacher (placement 'fsdp') are listed per device too. "
        "The SD-1.5-sized UNet's teacher is a real sharded array on the "
        "fake devices; its student state is computed from shard shapes "
        "(allocating it would need 10 GiB of host memory). Its data=8 row is "
        "left out: eight replicated 2.4 GiB teachers do not fit the host; "
        "without fsdp each device holds the whole state (7285 MiB + EMA "
        "2428 MiB + teacher 2428 MiB).",
        "",
        "| model | params | mesh | params + opt total (MiB) | per device "
        "(MiB) | x 1/8 | EMA per device (MiB) | teacher per device (MiB) | "
        "how |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        END,
      ]
    )
    demo.write_section(ROOT / "docs" / "scaling.md", text + "\n", BEGIN, END)


if __name__ == "__main__":
  main()
