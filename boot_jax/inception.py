r"""Convert the FID Inception's PyTorch weights to safetensors, once.

    python -m boot_jax.inception --pth pt_inception-2015-12-05-6726825d.pth \
      --out inception_fid.safetensors

The .pth is pytorch-fid's release of the standard FID weights, downloaded
by you from https://github.com/mseitzer/pytorch-fid/releases. It is read
with `torch.load(weights_only=True)` (no pickled code runs) and checked
key by key against our network (boot_jax/evaluation/inception.py); the
output replaces only an earlier conversion. Needs the `convert` extra
(PyTorch).
"""

from __future__ import annotations

import sys

from boot_jax.evaluation import inception as inception_lib
from boot_jax.runtime import cli


def main(argv=None) -> int:
  import argparse  # noqa: PLC0415

  p = argparse.ArgumentParser(
    description="Convert the FID Inception's PyTorch weights to safetensors"
  )
  p.add_argument("--pth", required=True, help="pt_inception-2015-12-05 .pth")
  p.add_argument("--out", required=True, help="the .safetensors to write")
  args = p.parse_args(argv)
  code = cli.status_of(
    lambda: inception_lib.convert(args.pth, args.out),
    # RuntimeError: PyTorch's, for a file that is not a checkpoint.
    errors=(ValueError, OSError, RuntimeError),
  )
  if code == 0:
    print(f"wrote {args.out}")
  return code


if __name__ == "__main__":
  sys.exit(main())
