"""What a command may replace: only what a command of ours wrote before.

Every writer of boot_jax asks here before it replaces a folder or a file,
or starts writing into a folder that exists:

* `check_replace_dir`: an output folder (an export) is replaced only when
  its own marker says it is that kind of output (`KINDS`), it holds nothing
  that kind does not write, and it is none of the protected places: the
  filesystem root, a home directory, the current directory, a work
  directory, or an ancestor or descendant of the work directory in use.
* `check_replace_file`: an output file (a sample file, its PNG grid,
  reference statistics, converted weights) is replaced only when it reads
  as that kind of output.
* `check_workdir`: `train` and `train_teacher` write into a folder only
  when it does not exist, is empty, or is a work directory of theirs (its
  `config.json`, or only what a run writes before its `config.json`).
* `replace_dir`: puts a finished folder in place of an output folder that
  the checks above allowed.

Refusals are `RefusedError` (a `ValueError`: the programs print them as
one line): they name what is there and never advise `--overwrite`.
Everything here reads; nothing is written or removed before a check
passed. The protected places come from `Places.current()`; tests build a
`Places` of their own to stand for `/` and `$HOME` in a temporary tree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import tempfile
import zipfile

from boot_jax.runtime import paths


class RefusedError(ValueError):
  """A write that would replace or mix with something we did not write."""


# An output folder kind: its marker file and the names it may hold.
@dataclasses.dataclass(frozen=True)
class FolderKind:
  what: str  # "an export folder"
  marker: str  # the file that says what the folder is
  marker_keys: tuple[str, ...]  # JSON keys the marker must hold
  names: frozenset[str]  # every entry the kind writes


EXPORT = FolderKind(
  what="an export folder",
  marker="signature.json",
  marker_keys=("checkpoint_step", "inputs", "output"),
  names=frozenset(
    {"sampler.jax", "params.npz", "signature.json", "README.md", "diffusers"}
  ),
)
KINDS = {"export": EXPORT}

# What a run writes into its work directory before config.json exists:
# the lock, orbax's (empty) checkpoint folder, and a recipe teacher's work
# directory (teacher.path inside the work directory).
WORKDIR_CONFIG = "config.json"
EARLY_NAMES = (".lock", "checkpoints")
# Transient files of ours that another process of the same run may hold
# there: paths.check_writable's probe, paths.write_atomic's temporary.
TRANSIENT_PREFIXES = (".write-probe-", ".tmp-")


@dataclasses.dataclass(frozen=True)
class Places:
  """The places no command replaces, as absolute local paths.

  Attributes:
    roots: filesystem roots (`/`).
    homes: home directories (yours, `$HOME`, every account's).
    cwd: the current directory.
  """

  roots: tuple[str, ...]
  homes: tuple[str, ...]
  cwd: str

  @classmethod
  def current(cls) -> Places:
    homes = {os.path.expanduser("~")}
    if os.environ.get("HOME"):
      homes.add(os.environ["HOME"])
    try:
      homes.update(p.pw_dir for p in pwd.getpwall() if p.pw_dir)
    except OSError:  # no passwd database (some containers)
      pass
    return cls(
      roots=(os.path.abspath(os.sep),),
      homes=tuple(sorted(_real(h) for h in homes)),
      cwd=_real(os.getcwd()),
    )


def _real(path: str) -> str:
  """An absolute path with links resolved (local), or the URL as given."""
  if paths.is_remote(path):
    return path.rstrip("/")
  return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(child: str, parent: str) -> bool:
  """Whether `child` is `parent` or below it (both from `_real`)."""
  if child == parent:
    return True
  sep = "/" if paths.is_remote(parent) else os.sep
  return child.startswith(parent.rstrip(sep) + sep)


def _entries(path: str) -> list[str]:
  try:
    names = paths.listdir(path)
  except FileNotFoundError:
    # Gone since it was seen: a bucket "folder" that held only another
    # process's write probe (paths.check_writable), now deleted.
    return []
  return sorted(n.rstrip("/") for n in names)


def _shown(names: list[str], limit: int = 3) -> str:
  shown = ", ".join(names[:limit])
  return shown + (
    f" and {len(names) - limit} more" if len(names) > limit else ""
  )


def is_workdir(path: str) -> bool:
  """Whether `path` holds a work directory's config.json of ours."""
  config = paths.join(path, WORKDIR_CONFIG)
  try:
    if not paths.isfile(config):
      return False
    data = json.loads(paths.read_text(config))
  except (OSError, UnicodeDecodeError, ValueError):
    return False
  return isinstance(data, dict) and isinstance(data.get("train"), dict)


def _protected(path: str, places: Places, workdir: str | None) -> str | None:
  """Why `path` (from `_real`) may never be replaced, or None."""
  if path in places.roots or os.path.dirname(path) == path:
    return "the filesystem root"
  if path in places.homes:
    return "a home directory"
  if path == places.cwd:
    return "the current directory"
  if workdir is not None:
    w = _real(workdir)
    if path == w:
      return "the work directory in use"
    if _inside(w, path):
      return f"a folder holding the work directory {w}"
    if _inside(path, w):
      return f"inside the work directory {w}"
  if paths.isdir(path) and is_workdir(path):
    return "a work directory"
  for home in places.homes:
    if _inside(home, path):
      return f"a folder holding the home directory {home}"
  if _inside(places.cwd, path):
    return "a folder holding the current directory"
  return None


def check_replace_dir(
  path: str,
  kind: FolderKind,
  *,
  workdir: str | None = None,
  places: Places | None = None,
) -> bool:
  """May the command put its output folder at `path`?

  Args:
    path: the output folder (local or `gs://`).
    kind: what the command writes there (`EXPORT`).
    workdir: the work directory the command reads, never replaced, nor
      anything above or inside it.
    places: the protected places (default `Places.current()`).

  Returns:
    True when `path` holds an earlier output of `kind` that may be replaced;
    False when nothing is there (or an empty folder).

  Raises:
    RefusedError: `path` is a file, a protected place, or a folder that is
      not, by its own marker, an output of `kind`.
  """
  places = places or Places.current()
  if paths.isfile(path):
    raise RefusedError(f"{path} is a file, not {kind.what}; give a folder")
  if not paths.isdir(path):
    return False
  why = _protected(_real(path), places, workdir)
  if why is not None:
    raise RefusedError(f"will not replace {path}: it is {why}")
  names = _entries(path)
  if not names:
    return False
  marker = paths.join(path, kind.marker)
  try:
    data = json.loads(paths.read_text(marker)) if paths.isfile(marker) else None
  except (OSError, UnicodeDecodeError, ValueError):
    data = None
  if not isinstance(data, dict) or any(k not in data for k in kind.marker_keys):
    raise RefusedError(
      f"will not replace {path}: it is not {kind.what} (no {kind.marker} of "
      f"ours; it holds {_shown(names)}); give a new or empty folder"
    )
  foreign = [n for n in names if n not in kind.names]
  if foreign:
    raise RefusedError(
      f"will not replace {path}: besides {kind.what} it holds "
      f"{_shown(foreign)}, which the export did not write"
    )
  return True


def _exchange(a: str, b: str) -> bool:
  """Swaps two paths in one step (Linux renameat2); False if unsupported."""
  try:
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  rc = renameat2(
    at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange
  )
  return rc == 0


def replace_dir(tmp: str, out: str, existed: bool) -> None:
  """Moves the finished local folder `tmp` to `out`.

  An earlier output at `out` (checked by `check_replace_dir`, hence
  `existed`) is swapped with `tmp` in one rename where the system can
  (readers see the old folder or the new one, never neither), else moved
  aside first and moved back if the second rename fails; then removed.
  """
  if not existed or not os.path.isdir(out):
    if os.path.isdir(out):  # an empty folder
      os.rmdir(out)
    os.replace(tmp, out)
    return
  if _exchange(tmp, out):
    shutil.rmtree(tmp)
    return
  aside = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=".old-export-")
  old = os.path.join(aside, "old")
  os.replace(out, old)
  try:
    os.replace(tmp, out)
  except BaseException:
    os.replace(old, out)
    raise
  shutil.rmtree(aside)


def check_replace_file(path: str, is_ours, what: str) -> bool:
  """May the command replace the file at `path`?

  Args:
    path: the output file (local or `gs://`).
    is_ours: `local_path -> bool`, whether an existing file reads as the
      kind of output the command writes.
    what: that kind, for the refusal ("a sample file").

  Returns:
    True when an earlier output is there (it will be replaced), False when
    nothing is.

  Raises:
    RefusedError: a folder, or a file that is not such an output.
  """
  if paths.isdir(path):
    raise RefusedError(f"{path} is a folder; give a file path")
  if not paths.exists(path):
    return False
  try:
    ours = bool(is_ours(paths.local_copy(path)))
  except (OSError, ValueError):
    ours = False
  if not ours:
    raise RefusedError(
      f"will not replace {path}: it is not {what} written by boot_jax; "
      "give a new file path"
    )
  return True


def is_sample_npz(path: str) -> bool:
  """A `sample` output: a zip of `images`, `noise` (and `latents`)."""
  try:
    with zipfile.ZipFile(path) as z:
      names = set(z.namelist())
  except (OSError, zipfile.BadZipFile):
    return False
  return (
    {"images.npy", "noise.npy"}
    <= names
    <= {
      "images.npy",
      "noise.npy",
      "latents.npy",
    }
  )


# The text chunk our PNG grids carry (workdir.save_image_grid).
PNG_KEY, PNG_VALUE = "Software", "boot_jax"


def is_our_png(path: str) -> bool:
  """A PNG grid written by boot_jax (its text chunk says so)."""
  try:
    from PIL import Image  # noqa: PLC0415

    with Image.open(path) as im:
      return im.format == "PNG" and im.info.get(PNG_KEY) == PNG_VALUE
  except (OSError, ValueError, SyntaxError):
    return False


def check_sample_outputs(out: str, png: str | None) -> None:
  """`sample --out F.npz` replaces F.npz and F.png only if they are ours.

  A PNG grid written before its marker existed counts as ours when the
  sample file beside it is ours (the two were written together).
  """
  npz_ours = check_replace_file(out, is_sample_npz, "a sample file")
  if png is None or not paths.exists(png):
    return
  if npz_ours and not paths.isdir(png):
    try:
      if _is_png(paths.local_copy(png)):
        return
    except OSError:
      pass
  check_replace_file(png, is_our_png, "a sample grid")


def _is_png(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n"


def check_workdir(path: str, places: Places | None = None) -> None:
  """`train` and `train_teacher` write only into a folder of theirs.

  Allowed: a missing or empty folder; a work directory (its config.json);
  a run's first files before config.json (`EARLY_NAMES`, and folders that
  are themselves such work directories: a recipe teacher's).

  Raises:
    RefusedError: anything else, naming what is there.
  """
  places = places or Places.current()
  real = _real(path)
  if paths.isfile(path):
    raise RefusedError(f"--workdir {path} is a file; give a folder")
  if real in places.roots or os.path.dirname(real) == real:
    raise RefusedError(f"--workdir {path} is the filesystem root")
  if real in places.homes:
    raise RefusedError(f"--workdir {path} is a home directory")
  if not paths.isdir(path):
    return
  if is_workdir(path):
    return
  names = _entries(path)
  foreign = [n for n in names if not _early(path, n)]
  if foreign:
    raise RefusedError(
      f"--workdir {path} holds {_shown(foreign)} and is not a work directory "
      "(no config.json of ours); give a new or empty folder"
    )


def _early(workdir: str, name: str) -> bool:
  """Whether entry `name` is one a run writes before its config.json."""
  full = paths.join(workdir, name)
  if name.startswith(TRANSIENT_PREFIXES):
    return True
  if name == ".lock":
    try:
      data = json.loads(paths.read_text(full))
    except (OSError, UnicodeDecodeError, ValueError):
      return False
    return isinstance(data, dict) and "pid" in data and "host" in data
  if not paths.isdir(full):
    return False
  if name == "checkpoints":
    return all(n.rstrip("/")[:1].isdigit() for n in paths.listdir(full))
  try:
    check_workdir(full)
  except RefusedError:
    return False
  return True
