r"""The standard FID feature extractor (Inception-v3, 2048-d pool features).

Our Flax network computes what the FID literature's extractor computes:
TensorFlow's 2015 Inception-v3 graph as pytorch-fid rebuilds it (its
`FIDInceptionA`, `C` and `E` blocks differ from torchvision's: average
pools that do not count padding, a max pool in the last block), with
the input resized to 299x299 (bilinear, half-pixel centres, no
antialiasing) and scaled from [0, 1] to [-1, 1]. Batch norms use their
running statistics (epsilon 1e-3).

Weights come from a local safetensors file. Make it once from the standard
`pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's release of the FID
weights, downloaded by you from
https://github.com/mseitzer/pytorch-fid/releases):

    python -m boot_jax.inception --pth pt_inception-2015-12-05-6726825d.pth \
      --out inception_fid.safetensors

The conversion reads the .pth with `torch.load(weights_only=True)` (no
pickled code runs); nothing else in boot_jax reads a pickle.
"""

from __future__ import annotations

import sys

from boot_jax.evaluation import inception as inception_lib
from boot_jax.runtime import guards


def main(argv=None) -> int:
  import argparse  # noqa: PLC0415

  p = argparse.ArgumentParser(
    description="Convert the FID Inception's PyTorch weights to safetensors"
  )
  p.add_argument("--pth", required=True, help="pt_inception-2015-12-05 .pth")
  p.add_argument("--out", required=True, help="the .safetensors to write")
  args = p.parse_args(argv)
  try:
    inception_lib.convert(args.pth, args.out)
  except (
    inception_lib.InceptionError,
    guards.RefusedError,
    OSError,
    RuntimeError,
  ) as e:
    print(f"error: {' '.join(str(e).split())[:300]}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
