"""Reference statistics of real images for Inception FID, KID and P/R
(what `python -m boot_jax.fid_stats` writes, and how evaluation reads
them; the file's contents are described in boot_jax/fid_stats.py).

`open_reference` refuses a reference whose extractor, weights or
preprocessing (`PREPROCESSING`) differ from the evaluation's own.
"""

from __future__ import annotations

import hashlib

import numpy as np

from boot_jax.data import datasets
from boot_jax.evaluation import digits_classifier, inception
from boot_jax.runtime import paths

PREPROCESSING = (
  "uint8 quantisation round((x+1)*127.5)/255, grey to RGB, bilinear resize "
  "to 299 (half-pixel centres, no antialiasing), 2x-1"
)
DEFAULT_KEEP = 10_000


class StatsError(ValueError):
  """Reference statistics that cannot be made or used as asked."""


def to_unit_rgb(images) -> np.ndarray:
  """Images in [-1, 1] `[N, H, W, C]` -> uint8-quantised RGB in [0, 1]."""
  x = np.asarray(images, np.float32)
  x = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5) / 255.0
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  if x.shape[-1] != 3:
    raise StatsError(f"images must have 1 or 3 channels, not {x.shape[-1]}")
  return x.astype(np.float32)


def weights_sha256(path: str) -> str:
  return hashlib.sha256(paths.read_bytes(path)).hexdigest()


class Extractor:
  """The Inception with its weights, and the identity stored with stats."""

  def __init__(self, weights: str):
    self.params = inception.load(weights)
    self.identity = dict(
      extractor=inception.IDENTITY,
      weights_sha256=weights_sha256(weights),
      preprocessing=PREPROCESSING,
    )

  def features(self, images, batch_size: int = 50) -> np.ndarray:
    """Features of images in [-1, 1] (quantised as PREPROCESSING says)."""
    return inception.features(self.params, to_unit_rgb(images), batch_size)


def make(
  features: np.ndarray, identity: dict, source: str, keep: int = DEFAULT_KEEP
) -> dict:
  if len(features) < 2:
    raise StatsError(
      f"{source}: {len(features)} image(s); statistics need at least 2"
    )
  mu, sigma = digits_classifier.gaussian(features)
  return dict(
    mu=mu,
    sigma=sigma,
    count=len(features),
    features=np.asarray(features[:keep], np.float32),
    source=source,
    **identity,
  )


def is_stats(path: str) -> bool:
  """Whether `path` is reference statistics written by `save`."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return {"mu", "sigma", "count"} <= set(z.files)
  except (OSError, ValueError, AttributeError):
    return False


def save(stats: dict, out: str) -> None:
  import io  # noqa: PLC0415

  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in stats.items()})
  paths.write_atomic(out, buf.getvalue())


def load(path: str, identity: dict) -> dict:
  """A reference file, refused in one line if it was made otherwise."""
  if not paths.isfile(path):
    raise StatsError(f"reference statistics {path} do not exist")
  import io  # noqa: PLC0415

  try:
    with np.load(io.BytesIO(paths.read_bytes(path))) as f:
      stats = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise StatsError(f"cannot read {path}: {e}") from None
  for key, want in identity.items():
    got = str(stats.get(key, "(missing)"))
    if got != want:
      raise StatsError(
        f"{path} was made with another {key} ({got[:80]!r}, here "
        f"{want[:80]!r}): remake it with python -m boot_jax.fid_stats"
      )
  return stats


def open_reference(weights: str, reference: str) -> tuple[Extractor, dict]:
  """The extractor of `weights` and the statistics of `reference`, refused
  in one line when made with another extractor, weights or preprocessing
  (before any sampling is spent on them)."""
  extractor = Extractor(weights)
  return extractor, load(reference, extractor.identity)


def read_square(path: str, size: int) -> np.ndarray:
  """An image file as `[size, size, 3]` in [-1, 1]: RGB, the largest
  centred square cropped, resized with PIL's bicubic filter."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

  try:
    with Image.open(path) as img:
      img = img.convert("RGB")
      w, h = img.size
      s = min(w, h)
      left, top = (w - s) // 2, (h - s) // 2
      img = img.crop((left, top, left + s, top + s))
      img = img.resize((size, size), Image.BICUBIC)
      arr = np.asarray(img, np.float32)
  except (OSError, UnidentifiedImageError) as e:
    raise StatsError(f"cannot read image {path!r}: {e}") from None
  return arr / 127.5 - 1.0


def folder_features(extractor, folder, size, batch, printer=print):
  """Features of every image of `folder` (`read_square`), read and
  scored `batch` images at a time: memory holds one batch of pixels."""
  _, files = datasets.image_files(folder)
  feats = []
  for i in range(0, len(files), batch):
    part = files[i : i + batch]
    feats.append(
      extractor.features(np.stack([read_square(f, size) for f in part]), batch)
    )
    done = i + len(part)
    if done == len(files) or (i // batch) % 20 == 19:
      printer(f"fid_stats: {done:,}/{len(files):,} images")
  return np.concatenate(feats)
