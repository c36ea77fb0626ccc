"""Metric writing (JSON lines) and progress lines with an ETA."""

from __future__ import annotations

import json
import os
import time


class MetricWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl`.

  Every row carries `step` and `wall_time` (seconds since the epoch) next to
  the scalars. Only process 0 should write.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "wall_time": time.time()}
    row.update({k: float(v) for k, v in scalars.items() if k != "step"})
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")


def format_duration(seconds: float) -> str:
  seconds = max(int(round(seconds)), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(step: int, total: int, steps_per_s: float, scalars: dict):
  """`step 500/8000 (6%) 83.1 steps/s ETA 1:30 loss=... ` as one line."""
  eta = (total - step) / steps_per_s if steps_per_s > 0 else float("nan")
  shown = " ".join(
    f"{k}={v:.4g}" for k, v in scalars.items() if k.startswith("loss")
  )
  pct = 100.0 * step / max(total, 1)
  eta_s = format_duration(eta) if eta == eta else "?"
  return (
    f"step {step}/{total} ({pct:.0f}%) {steps_per_s:.1f} steps/s "
    f"ETA {eta_s} {shown}"
  )


class TensorBoard:
  """Scalars (and images) to TensorBoard event files under `W/tb/`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter  # imports protobuf: lazily

      self._writer = SummaryWriter(os.path.join(workdir, "tb"))

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
