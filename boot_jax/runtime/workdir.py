"""The work-directory contract (README.md, "Command-line tools").

    W/config.json     the resolved config
    W/checkpoints/    orbax checkpoints (see checkpoint.py)
    W/metrics.jsonl   one JSON object per logged step (and per evaluation
                      with eval/* scores when eval.inception is set)
    W/samples/        PNG grids
    W/tb/             TensorBoard event files

A run writes only into a folder of its own: `check` refuses a non-empty
folder that is not a work directory (guards.check_workdir). Nothing here
writes before the run has been validated: `check` only reads
(on an object store it also uploads and deletes one empty probe object), so
a bad command never touches a good work directory. Every path may be local
or a `gs://` URL (paths.py).
"""

from __future__ import annotations

import io
import json
import os

import ml_collections
import numpy as np

from boot_jax.config import defaults
from boot_jax.runtime import guards, paths

CONFIG = "config.json"
METRICS = "metrics.jsonl"


class WorkdirError(ValueError):
  """A work directory that cannot be used as asked."""


def config_dict(config) -> dict:
  """The config as plain JSON data (tuples become lists)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = paths.join(workdir, CONFIG)
  if not paths.isfile(path):
    raise WorkdirError(f"{workdir!r} holds no {CONFIG}: not a work directory")
  try:
    return ml_collections.ConfigDict(json.loads(paths.read_text(path)))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"cannot read {path}: {e}") from None


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def config_differences(old: dict, new: dict) -> list[str]:
  """Keys whose values differ, ignoring `defaults.RESUMABLE_CHANGES`."""
  a = defaults.resolve_unset(_flatten(old))
  b = defaults.resolve_unset(_flatten(new))
  # A key added to the defaults after the run was made is no difference
  # while it keeps its default (e.g. boot.refine=False).
  default_values = _flatten(defaults.base_config().to_dict())
  diffs = []
  for key in sorted(set(a) | set(b)):
    if (
      key not in a
      and key in default_values
      and b.get(key) == default_values[key]
    ):
      continue
    # An unset key (None: follow the folder or the default) added after
    # the run was made, or dropped since, is no difference either.
    if (key not in a and b[key] is None) or (key not in b and a[key] is None):
      continue
    if any(
      key == r or (r.endswith(".") and key.startswith(r))
      for r in defaults.RESUMABLE_CHANGES
    ):
      continue
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      diffs.append(
        f"{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}"
      )
  return diffs


def check(workdir: str, config, compare: bool = True) -> bool:
  """Validates the work directory for `config` without writing to it.

  Args:
    workdir: the work directory (need not exist yet).
    config: the run's config.
    compare: also compare with an existing config.json (pass False before
      the config's derived fields are resolved).

  Returns:
    True when it already holds a run (config.json present).

  Raises:
    WorkdirError: a folder that is not a work directory of ours (and not
      empty), unwritable, or made by a different config (unless
      `train.allow_config_change`).
  """
  workdir = paths.abspath(workdir)
  try:
    guards.check_workdir(workdir)
  except guards.RefusedError as e:
    raise WorkdirError(str(e)) from None
  try:
    paths.check_writable(workdir)
  except OSError as e:
    raise WorkdirError(f"work directory {e}") from None
  path = paths.join(workdir, CONFIG)
  if not paths.exists(path):
    return False
  if not compare:
    return True
  old = config_dict(load_config(workdir))
  diffs = config_differences(old, config_dict(config))
  if diffs and not config.train.get("allow_config_change", False):
    shown = "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")
    raise WorkdirError(
      f"{workdir} was made by a different config ({shown}); use another "
      "--workdir or pass --config.train.allow_config_change=true"
    )
  return True


def config_changed(workdir: str, config) -> bool:
  """Whether `config` differs in any key from the saved config.json."""
  try:
    old = config_dict(load_config(workdir))
  except WorkdirError:
    return False
  return old != config_dict(config)


def atomic_write(path: str, text: str) -> None:
  """Writes so that readers never see a half-written file (paths.py)."""
  paths.write_atomic(path, text)


def resolve_teacher_path(config, workdir: str) -> None:
  """Makes a relative `teacher.path` relative to the work directory (in a
  mutable ConfigDict): a run whose teacher lives inside it can be moved."""
  path = config.teacher.get("path")
  if path and not paths.is_remote(path) and not os.path.isabs(path):
    config.teacher.path = paths.join(paths.abspath(workdir), path)


def write_config(workdir: str, config) -> None:
  paths.makedirs(workdir)
  text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  atomic_write(paths.join(workdir, CONFIG), text)


def truncate_metrics(workdir: str, step: int, printer=print) -> None:
  """Drops rows after `step` (written before a crash, redone on resume).

  A last line cut short by a kill (no newline, not JSON) is dropped; any
  other line that is not a JSON object with a `step` (an edit, a bad byte)
  is kept byte for byte and reported with the file and its line number.
  """
  path = paths.join(workdir, METRICS)
  if not paths.exists(path):
    return
  raw = paths.read_bytes(path).splitlines(keepends=True)
  keep, report = [], []
  for number, line in enumerate(raw, 1):
    try:
      row = json.loads(line.decode("utf-8"))
      row_step = row["step"] if isinstance(row, dict) else None
      if not isinstance(row_step, int):
        raise TypeError("no integer step")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
      if number == len(raw) and not line.endswith(b"\n"):
        report.append(f"{path} line {number} was cut short: dropped")
        continue
      report.append(
        f"{path} line {number} is not a JSON object with a step: kept as it is"
      )
      keep.append(line)
      continue
    if row_step <= step:
      keep.append(line)
  for line in report:
    printer(line)
  if len(keep) != len(raw):
    paths.write_atomic(path, b"".join(keep))


def image_grid(images: np.ndarray, ncol: int | None = None, scale: int = 1):
  """Tiles `[N, H, W, C]` images in [-1, 1] into one uint8 array."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  pad = 1
  grid = np.ones(
    (nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32
  )
  for i, img in enumerate(images):
    r, col = divmod(i, ncol)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y : y + h, x : x + w] = img
  grid = ((grid.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
  if scale > 1:
    grid = grid.repeat(scale, 0).repeat(scale, 1)
  return grid[..., 0] if c == 1 else grid


def save_image_grid(images, path: str, ncol: int | None = None):
  """Writes a PNG grid; small images are enlarged to >= 32 px per tile.

  Returns:
    the grid written (uint8 `[H, W]` or `[H, W, C]`), e.g. for TensorBoard.
  """
  from PIL import Image, PngImagePlugin

  h = np.asarray(images).shape[1]
  scale = max(1, int(np.ceil(32 / h)))
  grid = image_grid(images, ncol, scale)
  buf = io.BytesIO()
  # The text chunk marks the grid as ours (guards.is_our_png).
  info = PngImagePlugin.PngInfo()
  info.add_text(guards.PNG_KEY, guards.PNG_VALUE)
  Image.fromarray(grid).save(buf, format="PNG", pnginfo=info)
  paths.write_atomic(path, buf.getvalue())
  return grid
