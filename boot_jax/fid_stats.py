r"""Reference statistics of real images for Inception FID, KID and P/R.

    python -m boot_jax.fid_stats --inception inception_fid.safetensors \
      (--images DIR --size S | --idx FILE --size S | --digits) --out ref.npz

The file holds the mean and covariance of the images' 2048-d Inception
features (float64), the sample count, up to `--keep` feature rows
(float32; KID and precision/recall need samples, not moments), and what
made them: the extractor's identity, the weights file's SHA-256 and the
preprocessing. `evaluate --protocol pixel` refuses a reference whose
extractor, weights or preprocessing differ from its own.

A folder's images (PNG/JPEG, sorted by path) are read `--batch` at a
time (memory holds one batch of pixels and the 2048-d features): RGB, the
largest centred square, resized to `--size` with PIL's bicubic filter, as
text-to-image references (COCO) are usually made square.

Preprocessing (`PREPROCESSING`), for references and samples alike: images
in [-1, 1] are quantised to uint8 as a PNG would store them
(`round((x + 1) * 127.5)`), read back in [0, 1], grey images repeated to
3 channels, then the extractor's own resize to 299 and scaling.
"""

from __future__ import annotations

import sys

import numpy as np

from boot_jax.data import datasets
from boot_jax.evaluation import reference_stats
from boot_jax.runtime import cli, guards, paths


def _features(args, extractor) -> tuple[np.ndarray, str]:
  if args.digits:
    images, source = datasets.load_digits(args.size or 8).images, "digits"
  elif not args.size:
    raise reference_stats.StatsError(
      "--size (pixels) is needed with --images and --idx"
    )
  elif args.images:
    source = f"folder:{args.images} (centre square, bicubic to {args.size})"
    print(f"fid_stats: images of {source}", flush=True)
    feats = reference_stats.folder_features(
      extractor,
      args.images,
      args.size,
      args.batch,
      lambda m: print(m, flush=True),
    )
    return feats, source
  else:
    ds = datasets.load_idx(paths.local_copy(args.idx), None, args.size)
    images, source = ds.images, f"idx:{args.idx}"
  print(f"fid_stats: {len(images):,} images of {source}", flush=True)
  return extractor.features(images, args.batch), source


def main(argv=None) -> int:
  import argparse  # noqa: PLC0415

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--images", help="a folder of PNG/JPEG images")
  src.add_argument("--idx", help="an IDX image file (MNIST format)")
  src.add_argument("--digits", action="store_true", help="sklearn's digits")
  p.add_argument("--size", type=int, help="image size (folders, idx)")
  p.add_argument("--inception", required=True, help="FID weights")
  p.add_argument("--out", required=True, help="the .npz to write")
  p.add_argument(
    "--keep", type=int, default=reference_stats.DEFAULT_KEEP, help="rows kept"
  )
  p.add_argument("--batch", type=int, default=50)
  args = p.parse_args(argv)
  done = []

  def body():
    if args.size is not None and args.size < 1:
      raise reference_stats.StatsError(f"--size must be >= 1, got {args.size}")
    if args.batch < 1:
      raise reference_stats.StatsError(
        f"--batch must be >= 1, got {args.batch}"
      )
    guards.check_replace_file(
      args.out, reference_stats.is_stats, "a reference statistics file"
    )
    extractor = reference_stats.Extractor(args.inception)
    feats, source = _features(args, extractor)
    reference_stats.save(
      reference_stats.make(feats, extractor.identity, source, args.keep),
      args.out,
    )
    done.append(len(feats))

  code = cli.status_of(body)
  if code == 0:
    print(f"wrote {args.out} ({done[0]:,} images)")
  return code


if __name__ == "__main__":
  sys.exit(main())
