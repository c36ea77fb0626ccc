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
    f"{k}={v:.4g}" for k, v in scalars.items() if k.startswith("loss")
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
