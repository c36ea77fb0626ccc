r"""Bytes per device of BOOT on Stable Diffusion's UNets, from shard shapes.

    python benchmarks/sd_memory.py [--write]

Traces (jax.eval_shape, nothing allocated) diffusers' Flax UNet at SD 1.5's
and SD 2.1's published configs, the BOOT state around it (student params,
AdamW moments, EMA; float32) and the frozen teacher, shards them with our
rules on 8 fake CPU devices (diffusers' parameters carry no logical names,
so FSDP takes the largest divisible dimension of each), and sums each
device's shard shapes. Activations are not included: they scale with the
per-device batch (see docs/text_to_image.md). `--write` replaces the table
in docs/text_to_image.md.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from boot_jax import sharding  # noqa: E402
from boot_jax import state as state_lib  # noqa: E402
from boot_jax.teachers import sd  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import demo  # noqa: E402

BEGIN = "<!-- sd memory: begin -->"
END = "<!-- sd memory: end -->"

_COMMON = dict(
  in_channels=4,
  out_channels=4,
  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
  block_out_channels=(320, 640, 1280, 1280),
  layers_per_block=2,
)
MODELS = {
  "SD 1.5 (512 px)": (
    dict(
      _COMMON, sample_size=64, cross_attention_dim=768, attention_head_dim=8
    ),
    64,
    768,
  ),
  "SD 2.1 (768 px)": (
    dict(
      _COMMON,
      sample_size=96,
      cross_attention_dim=1024,
      attention_head_dim=(5, 10, 20, 20),
      use_linear_projection=True,
    ),
    96,
    1024,
  ),
}
MESHES = [(8, 1, 1), (2, 4, 1), (1, 8, 1)]


def per_device(tree, shardings) -> float:
  return float(
    sum(
      math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
      for a, s in zip(
        jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True
      )
    )
  )


def rows() -> list[str]:
  out = []
  opt = optax.adamw(1e-5)
  for name, (cfg, latent, width) in MODELS.items():
    module = sd.SDUNet(cfg)
    params = sd.unet_params_abstract(module, (latent, latent, 4), (77, width))
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
      gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
      student = per_device(state, sh)
      teacher_fsdp = per_device(params, tsh)
      teacher_rep = sharding.tree_bytes(params)
      out.append(
        f"| {name} | {n / 1e6:.0f}M | data={mesh_shape[0]} "
        f"fsdp={mesh_shape[1]} | {gib(student)} | {gib(teacher_rep)} | "
        f"{gib(teacher_fsdp)} |"
      )
      print(out[-1], flush=True)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--write", action="store_true")
  args = p.parse_args()
  table = rows()
  if args.write:
    text = "\n".join(
      [
        BEGIN,
        "Command: `python benchmarks/sd_memory.py --write` (shard shapes on 8 "
        f"fake CPU devices, jax {jax.__version__}, "
        f"{datetime.date.today()}). GiB per device, float32, activations "
        "excluded.",
        "",
        "| UNet | params | mesh | student params + AdamW + EMA | teacher "
        "replicated | teacher over fsdp |",
        "|---|---|---|---|---|---|",
        *table,
        END,
      ]
    )
    demo.write_section(
      ROOT / "docs" / "text_to_image.md", text + "\n", BEGIN, END
    )


if __name__ == "__main__":
  main()
