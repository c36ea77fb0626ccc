r"""Runs an exported sampler (`boot_jax.export`) where it was not made.

    python benchmarks/export_on_gpu.py --export DIR --reference s.npz \
      [--batches 16,256,1024] [--out result.json]

Needs only jax and numpy (no boot_jax): the artifact is deserialized and
called on this machine's default device. Checks it against `reference`
(a `sample` output made elsewhere from the same eps: max abs difference)
and times it per batch size (compiled, median of 20 calls). Used to check
that an artifact lowered on a CPU machine runs on a GPU; the numbers are
in docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import jax
import numpy as np
from jax import export


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--export", required=True)
  parser.add_argument("--reference", required=True)
  parser.add_argument("--batches", default="16,256,1024")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  root = pathlib.Path(args.export)
  exp = export.deserialize(bytearray((root / "sampler.jax").read_bytes()))
  weights = np.load(root / "params.npz")
  params = [weights[f"p{i:05d}"] for i in range(len(weights.files))]
  ref = np.load(args.reference)
  got = np.asarray(exp.call(params, ref["noise"]))
  result = dict(
    device=str(jax.devices()[0].device_kind),
    platform=jax.default_backend(),
    jax=jax.__version__,
    host=platform.node(),
    max_abs_vs_reference=float(np.max(np.abs(got - ref["images"]))),
    images_per_s={},
  )
  shape = ref["noise"].shape[1:]
  rng = np.random.default_rng(0)
  call = jax.jit(exp.call)
  dev_params = jax.device_put(params)
  for b in (int(x) for x in args.batches.split(",")):
    eps = jax.device_put(rng.standard_normal((b, *shape)).astype(np.float32))
    jax.block_until_ready(call(dev_params, eps))
    times = []
    for _ in range(20):
      t0 = time.perf_counter()
      jax.block_until_ready(call(dev_params, eps))
      times.append(time.perf_counter() - t0)
    result["images_per_s"][b] = b / float(np.median(times))
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
