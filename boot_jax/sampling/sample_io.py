"""The sample CLI's inputs and outputs: checked requests, noise files, and
an .npz written batch by batch.

`SampleWriter` streams each array to a raw .npy file in a temporary
directory beside the output, then packs them into the .npz (an
uncompressed zip of .npy files, as `np.savez` writes) and renames it into
place: memory stays bounded by one batch, and a failed or interrupted run
never leaves a partial output or replaces an existing one. An existing
output is replaced only when it is an earlier sample file (and its grid):
anything else at `--out` or beside it is refused (`boot_jax.guards`). A `gs://`
output is assembled in the local temporary directory and uploaded whole
(an object upload is all or nothing).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zipfile

import numpy as np

from boot_jax.runtime import guards, paths
from boot_jax.runtime import workdir as workdir_lib

MAX_SEED = 2**63 - 1
GRID_IMAGES = 256  # images drawn into the PNG beside the .npz


class RequestError(ValueError):
  """A sample request that is refused before any work."""


def check_request(f) -> None:
  """Validates the plain flags (ranges, the output path) up front."""
  num, batch, seed = f["num"].value, f["batch_size"].value, f["seed"].value
  if num is not None and num < 1:
    raise RequestError(f"--num must be >= 1, got {num}")
  if batch < 1:
    raise RequestError(f"--batch_size must be >= 1, got {batch}")
  if not 0 <= seed <= MAX_SEED:
    raise RequestError(f"--seed must be in [0, 2^63 - 1], got {seed}")
  if f["steps"].value < 1:
    raise RequestError(f"--steps must be >= 1, got {f['steps'].value}")
  if f["noise"].value and num is not None:
    raise RequestError(
      "give --noise or --num, not both (the noise file's rows are the samples)"
    )
  if f["prompt"].value and f["prompts_file"].value:
    raise RequestError("give --prompt or --prompts_file, not both")
  out = f["out"].value
  if out.endswith(("/", os.sep)) or (
    not paths.is_remote(out) and os.path.isdir(out)
  ):
    raise RequestError(f"--out {out!r} is a directory; give a .npz file path")
  if not out.endswith(".npz"):
    raise RequestError(f"--out {out!r} must end in .npz")
  # An existing file is replaced only when it is an earlier sample file.
  guards.check_replace_file(out, guards.is_sample_npz, "a sample file")


# Standard normal noise never comes near this: a file with larger values
# was scaled or is not noise, and would be blamed on the checkpoint.
MAX_NOISE = 1e3
# Rows are checked and read this many bytes at a time.
NOISE_CHUNK_BYTES = 64 * 2**20


class NoiseFile:
  """A checked `--noise` .npy, read row block by row block from disk.

  Memory holds one block of rows (`rows`), never the whole file.

  Attributes:
    path: the file as given; `shape`, `dtype`: the array's.
  """

  def __init__(self, path: str, local: str, shape, dtype, offset: int):
    self.path, self._local = path, local
    self.shape, self.dtype, self._offset = tuple(shape), dtype, offset
    self._row_bytes = dtype.itemsize * math.prod(shape[1:])

  def __len__(self) -> int:
    return self.shape[0]

  def rows(self, start: int, n: int) -> np.ndarray:
    """Rows `start .. start + n - 1` as float32."""
    n = max(0, min(n, len(self) - start))
    with open(self._local, "rb") as f:
      f.seek(self._offset + start * self._row_bytes)
      data = f.read(n * self._row_bytes)
    arr = np.frombuffer(data, self.dtype).reshape((n, *self.shape[1:]))
    return arr.astype(np.float32)

  def blocks(self):
    """(start, rows) over the whole file, a block at a time."""
    step = max(1, NOISE_CHUNK_BYTES // max(self._row_bytes, 1))
    for start in range(0, len(self), step):
      yield start, self.rows(start, step)


def read_noise(path: str | None, shape: tuple[int, ...]) -> NoiseFile | None:
  """A `--noise` file: a real `[N, *shape]` .npy with N >= 1 whose values
  are finite and at most `MAX_NOISE` in size, checked block by block."""
  if not path:
    return None
  try:
    local = paths.local_copy(path)
    with open(local, "rb") as f:
      if f.read(4) == b"PK\x03\x04":
        raise RequestError(f"--noise {path} is not a .npy array (an .npz?)")
      f.seek(0)
      version = np.lib.format.read_magic(f)
      read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
      )
      full, fortran, dtype = read_header(f)
      offset = f.tell()
    size = os.path.getsize(local)
  except (OSError, ValueError) as e:
    raise RequestError(f"cannot read --noise {path}: {e}") from None
  want = "[N, " + ", ".join(map(str, shape)) + "]"
  if len(full) != len(shape) + 1 or tuple(full[1:]) != tuple(shape):
    raise RequestError(f"--noise has shape {tuple(full)}; expected {want}")
  if full[0] == 0:
    raise RequestError(f"--noise {path} has no rows")
  if not np.issubdtype(dtype, np.floating) or dtype.hasobject:
    raise RequestError(
      f"--noise {path} has dtype {dtype}; expected real floats"
    )
  if fortran:
    raise RequestError(f"--noise {path} is in Fortran order; save it C-ordered")
  if size < offset + dtype.itemsize * math.prod(full):
    raise RequestError(f"--noise {path} is truncated")
  noise = NoiseFile(path, local, full, dtype, offset)
  for start, rows in noise.blocks():
    flat = rows.reshape(len(rows), -1)
    if not np.all(np.isfinite(flat)):
      raise RequestError(f"--noise {path} holds NaN or infinite values")
    big = np.abs(flat).max(axis=1) > MAX_NOISE
    if big.any():
      row = start + int(np.argmax(big))
      raise RequestError(
        f"--noise {path} row {row} holds values beyond +-{MAX_NOISE:g}: not "
        "standard normal noise"
      )
  return noise


def _npy_header(f, shape, dtype) -> None:
  np.lib.format.write_array_header_2_0(
    f,
    {
      "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
      "fortran_order": False,
      "shape": tuple(shape),
    },
  )


class SampleWriter:
  """Writes `images`, `noise` (and `latents`) of `num` samples in order.

  Args:
    out: the .npz path.
    num: total samples.
    sample_shape: shape of one sample (latents for latent teachers).
    pixel_shape: shape of one image/vector as the user sees it.
  """

  def __init__(self, out: str, num: int, sample_shape, pixel_shape):
    self.out = paths.abspath(out)
    self.remote = paths.is_remote(self.out)
    self.num = num
    self.pixel_shape = tuple(pixel_shape)
    self.latent = tuple(sample_shape) != self.pixel_shape
    self.grid: list[np.ndarray] = []
    self.png = None
    shapes = {"images": self.pixel_shape, "noise": tuple(sample_shape)}
    if self.latent:
      shapes["latents"] = tuple(sample_shape)
    self.shapes = shapes
    # Replace only our own outputs: an earlier sample file and its grid.
    png = (
      self.out[: -len(".npz")] + ".png" if self.out.endswith(".npz") else None
    )
    guards.check_sample_outputs(
      self.out, png if len(self.pixel_shape) == 3 else None
    )
    directory = (
      tempfile.gettempdir() if self.remote else os.path.dirname(self.out)
    )
    if self.remote:
      paths.check_writable(paths.dirname(self.out))
    os.makedirs(directory, exist_ok=True)
    need = 2 * sum(4 * num * math.prod(s) for s in shapes.values()) + 2**20
    free = shutil.disk_usage(directory).free
    if need > free:
      raise RequestError(
        f"{num} samples need about {need / 2**30:.2f} GiB free in "
        f"{directory} (the arrays and the .npz), only {free / 2**30:.2f} GiB "
        "are free"
      )
    self.tmp = tempfile.mkdtemp(dir=directory, prefix=".tmp-sample-")
    self.files = {}
    self.written = 0

  def __enter__(self):
    try:
      for name, shape in self.shapes.items():
        f = open(os.path.join(self.tmp, name + ".npy"), "wb")  # noqa: SIM115
        _npy_header(f, (self.num,) + shape, np.float32)
        self.files[name] = f
    except BaseException:
      self._cleanup()
      raise
    return self

  def write(self, start: int, eps, samples, pixels) -> None:
    """Appends one batch (rows `start..`); batches arrive in order."""
    if start != self.written:
      raise RuntimeError(f"batch at {start}, expected {self.written}")
    rows = {"images": pixels, "noise": eps}
    if self.latent:
      rows["latents"] = samples
    for name, arr in rows.items():
      arr = np.ascontiguousarray(arr, np.float32)
      self.files[name].write(arr.tobytes())
    self.written += len(eps)
    have = sum(len(g) for g in self.grid)
    if len(self.pixel_shape) == 3 and have < GRID_IMAGES:
      self.grid.append(np.asarray(pixels[: GRID_IMAGES - have]))

  def __exit__(self, exc_type, exc, tb):
    try:
      for f in self.files.values():
        f.close()
      if exc_type is not None:
        return False
      if self.written != self.num:
        raise RuntimeError(f"wrote {self.written} of {self.num} samples")
      packed = os.path.join(self.tmp, "out.npz")
      with zipfile.ZipFile(packed, "w", zipfile.ZIP_STORED, True) as z:
        for name in self.shapes:
          z.write(os.path.join(self.tmp, name + ".npy"), name + ".npy")
      if self.grid:
        png = self.out[: -len(".npz")] + ".png"
        tmp_png = os.path.join(self.tmp, "grid.png")
        workdir_lib.save_image_grid(np.concatenate(self.grid), tmp_png)
        if self.remote:
          paths.put_file(tmp_png, png)
        else:
          os.replace(tmp_png, png)
        self.png = png
      if self.remote:
        paths.put_file(packed, self.out)
      else:
        os.replace(packed, self.out)
      return False
    finally:
      self._cleanup()

  def _cleanup(self) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)

  def summary(self) -> str:
    msg = f"wrote {self.num} samples to {self.out}"
    if self.png:
      msg += f" and {self.png}"
    return msg
