"""Datasets, only for teacher training and evaluation references.

BOOT distillation never reads data; nothing in the distillation path
imports this module's loaders. Every loader returns float32 images in NHWC
scaled to [-1, 1] and integer labels (-1 where a source has none).

Sources (`data.source` in a teacher config):

* `digits`: scikit-learn's 8x8 handwritten digits (1,797 images, 10
  classes), shipped inside scikit-learn; optionally upsampled.
* `folder`: every PNG/JPEG under a directory (labels from sub-directory
  names when there are any), resized to `image_size`.
* `idx`: MNIST-style IDX files (`images` and optional `labels` paths,
  gzip or plain), e.g. MNIST or Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zlib

import numpy as np

from boot_jax.runtime import paths

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
  """A dataset that cannot be read (missing, empty, malformed)."""


@dataclasses.dataclass
class Dataset:
  images: np.ndarray  # [N, H, W, C] float32 in [-1, 1]
  labels: np.ndarray  # [N] int32; -1 when unlabelled
  num_classes: int  # 0 when unlabelled
  name: str

  def __len__(self):
    return len(self.images)

  def split(self, holdout_fraction: float, seed: int = 0):
    """A reproducible (train, holdout) split."""
    order = np.random.default_rng(seed).permutation(len(self))
    n_hold = int(round(len(self) * holdout_fraction))
    hold, train = order[:n_hold], order[n_hold:]
    take = lambda idx, tag: Dataset(  # noqa: E731
      self.images[idx], self.labels[idx], self.num_classes, f"{self.name}:{tag}"
    )
    return take(train, "train"), take(hold, "holdout")


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of NHWC float images to `size` x `size`."""
  if images.shape[1] == size and images.shape[2] == size:
    return images
  from PIL import Image

  out = []
  for img in images:
    chans = [
      np.asarray(
        Image.fromarray(img[..., c].astype(np.float32), mode="F").resize(
          (size, size), Image.BILINEAR
        )
      )
      for c in range(img.shape[-1])
    ]
    out.append(np.stack(chans, -1))
  return np.stack(out).astype(np.float32)


def load_digits(image_size: int = 8) -> Dataset:
  """scikit-learn's handwritten digits in [-1, 1], shape [1797, S, S, 1]."""
  from sklearn import datasets as sk_datasets

  digits = sk_datasets.load_digits()
  images = digits.images.astype(np.float32)[..., None] / 16.0 * 2.0 - 1.0
  images = resize(images, image_size).clip(-1.0, 1.0)
  return Dataset(images, digits.target.astype(np.int32), 10, "digits")


def image_files(path: str) -> tuple[str, list[str]]:
  """`(local folder, sorted PNG/JPEG files under it)`; a `gs://` folder is
  downloaded once into the local cache (paths.py)."""
  if paths.is_remote(path):
    if not paths.isdir(path):
      raise DataError(f"image folder {path!r} does not exist")
    path = paths.local_copy(path)
  if not os.path.isdir(path):
    raise DataError(f"image folder {path!r} does not exist")
  files = sorted(
    os.path.join(root, f)
    for root, _, names in os.walk(path)
    for f in names
    if f.lower().endswith(IMAGE_EXTENSIONS)
  )
  if not files:
    raise DataError(f"image folder {path!r} holds no PNG or JPEG files")
  return path, files


def load_image_folder(path: str, image_size: int, channels: int = 3) -> Dataset:
  """All PNG/JPEG images under `path`, resized; labels from sub-folders.

  A `gs://` folder is downloaded once into the local cache (paths.py).
  """
  from PIL import Image, UnidentifiedImageError

  path, files = image_files(path)
  classes = sorted(
    {os.path.relpath(os.path.dirname(f), path) for f in files} - {"."}
  )
  class_index = {c: i for i, c in enumerate(classes)}
  mode = {1: "L", 3: "RGB"}.get(channels)
  if mode is None:
    raise DataError(f"channels must be 1 or 3, got {channels}")
  images, labels = [], []
  for f in files:
    try:
      with Image.open(f) as img:
        img = img.convert(mode).resize((image_size, image_size), Image.BICUBIC)
        arr = np.asarray(img, np.float32).reshape(image_size, image_size, -1)
    except (OSError, UnidentifiedImageError) as e:
      raise DataError(f"cannot read image {f!r}: {e}") from None
    images.append(arr / 127.5 - 1.0)
    rel = os.path.relpath(os.path.dirname(f), path)
    labels.append(class_index.get(rel, -1))
  labels = np.asarray(labels, np.int32)
  num_classes = len(classes) if classes and np.all(labels >= 0) else 0
  if not num_classes:
    labels = np.full_like(labels, -1)
  return Dataset(np.stack(images), labels, num_classes, f"folder:{path}")


def _read_idx(path: str) -> np.ndarray:
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    # A gzip file cut short raises EOFError.
    raise DataError(f"cannot read IDX file {path!r}: {e}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f"{path!r} is not an IDX file (bad magic number)")
  dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4"}
  dtype = dtypes.get(raw[2])
  if dtype is None:
    raise DataError(f"{path!r}: unsupported IDX element type {raw[2]:#x}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path!r} is truncated inside its header")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  count = int(np.prod(shape))
  itemsize = np.dtype(dtype).itemsize
  found = (len(raw) - header) // itemsize
  if found != count or (len(raw) - header) % itemsize:
    raise DataError(
      f"{path!r} is truncated or padded: its header says {count} values, "
      f"the file holds {len(raw) - header} bytes of data"
    )
  return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def load_idx(images_path: str, labels_path: str | None, image_size: int):
  """MNIST-format IDX images (and labels), in [-1, 1], resized."""
  images = _read_idx(images_path)
  if images.ndim != 3:
    raise DataError(f"{images_path!r}: expected [N, H, W] images")
  images = images.astype(np.float32)[..., None] / 127.5 - 1.0
  images = resize(images, image_size).clip(-1.0, 1.0)
  if labels_path:
    labels = _read_idx(labels_path).astype(np.int32)
    if labels.shape != (len(images),):
      raise DataError("IDX labels do not match the number of images")
    num_classes = int(labels.max()) + 1
  else:
    labels = np.full((len(images),), -1, np.int32)
    num_classes = 0
  return Dataset(images, labels, num_classes, f"idx:{images_path}")


def load_dataset(config) -> Dataset:
  """Loads the `data` section of a teacher config."""
  source = config.source
  size = int(config.image_size)
  if source == "digits":
    return load_digits(size)
  if source == "folder":
    return load_image_folder(config.path, size, int(config.get("channels", 3)))
  if source == "idx":
    return load_idx(config.path, config.get("labels_path") or None, size)
  raise DataError(
    f"unknown data.source {source!r}; expected digits, folder or idx"
  )
