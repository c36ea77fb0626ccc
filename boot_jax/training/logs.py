"""Metric writing (JSON lines) and progress lines with an ETA."""

from __future__ import annotations

import json
import time

from boot_jax.runtime import paths


class MetricWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl`.

  Every row carries `step` and `wall_time` (seconds since the epoch) next to
  the scalars. Only process 0 should write. On an object store, where
  nothing can be appended, each row rewrites the object whole from the
  rows kept in memory (one upload per logged row).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = paths.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._remote = None  # the object's bytes, kept as they are
    if enabled and paths.is_remote(self.path):
      self._remote = (
        paths.read_bytes(self.path) if paths.exists(self.path) else b""
      )

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "wall_time": time.time()}
    row.update({k: float(v) for k, v in scalars.items() if k != "step"})
    line = json.dumps(row) + "\n"
    if self._remote is not None:
      self._remote += line.encode("utf-8")
      paths.write_atomic(self.path, self._remote)
    else:
      paths.append_text(self.path, line)


def format_duration(seconds: float) -> str:
  seconds = max(int(round(seconds)), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(
  step: int, total: int, steps_per_s: float | None, scalars: dict
):
  """`step 500/8000 (6%) 83.1 steps/s ETA 1:30 loss=... ` as one line;
  without a rate yet (the first step, compiled on the way) it says so."""
  shown = " ".join(
    f"{k}={v:.4g}"
    for k, v in scalars.items()
    if k.startswith(("loss", "probe_"))
  )
  pct = 100.0 * step / max(total, 1)
  if steps_per_s is None or not steps_per_s > 0:
    return (
      f"step {step}/{total} ({pct:.0f}%) first step done (with compilation) "
      f"{shown}"
    ).rstrip()
  eta = format_duration((total - step) / steps_per_s)
  return (
    f"step {step}/{total} ({pct:.0f}%) {steps_per_s:.1f} steps/s "
    f"ETA {eta} {shown}"
  ).rstrip()


class _ObjectRecordWriter:
  """tensorboardX's record sink for object stores (through paths.py).

  Keeps the event file's bytes and uploads them whole at every flush, so
  the bucket always holds a complete, readable event file (TensorBoard
  reads `gs://` directly) and an interrupted upload leaves the previous
  one. `close` uploads only what changed, once.
  """

  def __init__(self, path: str):
    self.path = path
    self._data = bytearray()
    self._uploaded = -1

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    if self._uploaded != len(self._data):
      paths.write_atomic(self.path, bytes(self._data))
      self._uploaded = len(self._data)

  def close(self) -> None:
    self.flush()


class _ObjectWriterFactory:
  def open(self, path):
    return _ObjectRecordWriter(path)

  def directory_check(self, path):
    del path  # object stores have no directories to create


class TensorBoard:
  """Scalars (and images) to TensorBoard event files under `W/tb/`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = None
    if enabled:
      from tensorboardX import (
        SummaryWriter,  # imports protobuf: lazily
        record_writer,
      )

      logdir = paths.join(workdir, "tb")
      if paths.is_remote(logdir):
        # Replaces tensorboardX's own gs:// writer (google-cloud-storage
        # with its own credentials, uploading again from `__del__`).
        scheme = logdir.split("://", 1)[0]
        record_writer.register_writer_factory(scheme, _ObjectWriterFactory())
      self._writer = SummaryWriter(logdir)

  def write(self, step: int, scalars: dict) -> None:
    if self._writer is None:
      return
    for k, v in scalars.items():
      if k != "step":
        self._writer.add_scalar(k, float(v), int(step))
    self._writer.flush()

  def image(self, tag: str, grid_uint8, step: int) -> None:
    if self._writer is None:
      return
    fmt = "HW" if grid_uint8.ndim == 2 else "HWC"
    self._writer.add_image(tag, grid_uint8, int(step), dataformats=fmt)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
