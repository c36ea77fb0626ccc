"""One path layer for local files and object stores (`gs://bucket/...`).

Every file boot_jax reads or writes by name (work directories, teacher
folders, prompt files and their caches, exports) goes through here. Local
paths use the operating system directly; a URL with a scheme (`gs://`, or
any fsspec protocol whose package is installed) uses fsspec, with gcsfs for
Google Cloud Storage. Orbax checkpoints reach the same bucket through
orbax's own epath/tensorstore drivers (checkpoint.py).

What "atomic" means here:
  - local: `write_atomic` writes a temporary file in the same directory and
    renames it over the target (readers see the old or the new file).
  - Cloud Storage: one object upload is all or nothing (an interrupted
    upload leaves no object and the previous generation stays readable), so
    `write_atomic` uploads the whole content to the final name; there is no
    rename on GCS (a "rename" is a copy and a delete). Appending to an
    object is not possible: `append_text` rewrites the object whole.
  - `create_exclusive` is `O_EXCL` locally and an upload with the
    precondition "no live generation" (`ifGenerationMatch=0`) on GCS, which
    Cloud Storage enforces (the lock in lock.py relies on it).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile


class RemoteError(OSError):
  """An object-store operation failed (missing bucket, denied, offline)."""


def is_remote(path) -> bool:
  """True for URLs with a scheme other than `file://`."""
  path = str(path)
  return "://" in path and not path.startswith("file://")


def _fs(path: str):
  # Imported lazily: fsspec/gcsfs are only needed for remote paths.
  import fsspec

  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    scheme = path.split("://", 1)[0]
    raise RemoteError(
      f"cannot open {path}: no file system for {scheme}:// ({e}); for "
      "gs:// install gcsfs (pip install 'boot_jax[gcs]')"
    ) from None


def _call(what: str, path: str, fn, *args, **kwargs):
  """Runs an fsspec call; failures become one-line RemoteErrors."""
  try:
    return fn(*args, **kwargs)
  except FileNotFoundError:
    raise
  except RemoteError:
    raise
  except Exception as e:  # noqa: BLE001 - gcsfs/aiohttp raise many types
    text = " ".join(str(e).split())[:300]
    raise RemoteError(
      f"cannot {what} {path}: {type(e).__name__}: {text}"
    ) from None


def abspath(path: str) -> str:
  """An absolute local path, or the URL without a trailing slash."""
  path = str(path)
  if is_remote(path):
    scheme, rest = path.split("://", 1)
    rest = rest.rstrip("/")
    if not rest or rest.startswith("/"):
      raise RemoteError(f"{path!r} names no bucket ({scheme}://BUCKET/...)")
    return f"{scheme}://{rest}"
  if path.startswith("file://"):
    path = path[len("file://") :]
  return os.path.abspath(path)


def join(path: str, *parts: str) -> str:
  if is_remote(path):
    return posixpath.join(str(path), *parts)
  return os.path.join(path, *parts)


def dirname(path: str) -> str:
  if is_remote(path):
    scheme, rest = str(path).rstrip("/").split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest)}"
  return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
  return posixpath.basename(str(path).rstrip("/"))


def bucket_of(path: str) -> str:
  """`gs://bucket` of a remote URL."""
  scheme, rest = str(path).split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  fs, p = _fs(path)
  return _call("read", path, fs.exists, p)


def isdir(path: str) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  fs, p = _fs(path)
  return _call("read", path, fs.isdir, p)


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  fs, p = _fs(path)
  return _call("read", path, fs.isfile, p)


def listdir(path: str) -> list[str]:
  """Names directly under `path` (FileNotFoundError when absent)."""
  if not is_remote(path):
    return os.listdir(path)
  fs, p = _fs(path)
  fs.invalidate_cache(p)
  entries = _call("list", path, fs.ls, p, detail=False)
  return sorted({basename(e) for e in entries} - {""})


def makedirs(path: str) -> None:
  """Creates a local directory; object stores need none."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  fs, p = _fs(path)
  return _call("read", path, fs.cat_file, p)


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_atomic(path: str, data: bytes | str) -> None:
  """Writes `data` so that readers never see a partial file (see above)."""
  if isinstance(data, str):
    data = data.encode("utf-8")
  if is_remote(path):
    fs, p = _fs(path)
    _call("write", path, fs.pipe_file, p, data)
    return

  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)

  _replace_locally(path, write)


def _umask() -> int:
  """The process's umask, read without changing it where the system can
  (setting it, even briefly, races with other threads' files)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _replace_locally(path: str, write) -> None:
  """`write(tmp)` fills a temporary file beside `path`, renamed over it."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  os.close(fd)
  try:
    # mkstemp makes the file private (0600); the result honours the umask
    # as a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def append_text(path: str, text: str) -> None:
  """Appends locally; rewrites the whole object on an object store."""
  if not is_remote(path):
    with open(path, "a", encoding="utf-8") as f:
      f.write(text)
    return
  old = read_text(path) if exists(path) else ""
  write_atomic(path, old + text)


def create_exclusive(path: str, data: bytes) -> bool:
  """Creates `path` holding `data` only if it does not exist.

  Returns:
    False when it already existed (nothing written).
  """
  if not is_remote(path):
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True
  fs, p = _fs(path)
  if _call("read", path, fs.exists, p):
    return False
  try:
    with fs.open(p, "xb") as f:  # ifGenerationMatch=0 on GCS
      f.write(data)
  except FileExistsError:
    return False
  except Exception as e:  # noqa: BLE001
    if "412" in str(e) or "Precondition" in str(e):
      return False
    raise RemoteError(
      f"cannot write {path}: {type(e).__name__}: {' '.join(str(e).split())}"
    ) from None
  return True


def put_file(local: str, path: str) -> None:
  """Copies a local file to `path` (atomically, as `write_atomic`).

  Remote: one streamed upload (all or nothing); local: copy then rename.
  """
  if is_remote(path):
    fs, p = _fs(path)
    _call("write", path, fs.put_file, local, p)
    return
  import shutil

  _replace_locally(path, lambda tmp: shutil.copyfile(local, tmp))


def remove(path: str) -> None:
  """Deletes a file (FileNotFoundError when absent)."""
  if not is_remote(path):
    os.remove(path)
    return
  fs, p = _fs(path)
  _call("delete", path, fs.rm_file, p)


def rmtree(path: str) -> None:
  if not is_remote(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    return
  fs, p = _fs(path)
  if fs.exists(p):
    _call("delete", path, fs.rm, p, recursive=True)


def check_writable(directory: str) -> None:
  """Raises OSError (one line) if files cannot be created in `directory`.

  Locally: the nearest existing ancestor must be a writable directory.
  Remote: the bucket must exist and accept a small probe object, which is
  deleted again (the only reliable test of write permission).
  """
  if not is_remote(directory):
    directory = os.path.abspath(directory)
    probe = directory
    while not os.path.exists(probe):
      probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
      raise OSError(f"{directory}: {probe!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
      raise OSError(f"{directory} is not writable")
    return
  bucket = bucket_of(directory)
  fs, b = _fs(bucket)
  try:
    fs.invalidate_cache()
    found = fs.exists(b)
  except Exception as e:  # noqa: BLE001
    raise RemoteError(
      f"cannot reach {bucket}: {type(e).__name__}: "
      f"{' '.join(str(e).split())[:200]}"
    ) from None
  if not found:
    raise RemoteError(f"bucket {bucket} does not exist (for {directory})")
  probe = join(directory, f".write-probe-{os.getpid()}-{os.urandom(4).hex()}")
  try:
    write_atomic(probe, b"")
  except RemoteError as e:
    raise RemoteError(f"{directory} is not writable: {e}") from None
  try:
    remove(probe)
  except (OSError, RemoteError):
    pass


def local_copy(path: str, cache_dir: str | None = None) -> str:
  """A local path holding `path`'s file or folder (downloaded once).

  Local paths are returned unchanged. A remote file or folder is copied into
  `cache_dir` (default `$BOOT_JAX_CACHE/remote`, `BOOT_JAX_CACHE` being
  `~/.cache/boot_jax` unless set) under a name derived from
  its URL and its objects' sizes and checksums, so a changed object is
  fetched again and an unchanged one is reused. Each copy is written to a
  temporary directory and renamed, so an interrupted download never passes
  for a complete one.
  """
  if not is_remote(path):
    return path
  fs, p = _fs(path)
  fs.invalidate_cache()
  if not _call("read", path, fs.exists, p):
    raise FileNotFoundError(f"{path} does not exist")
  is_dir = _call("read", path, fs.isdir, p)
  files = (
    _call("list", path, fs.find, p, detail=True) if is_dir else {p: fs.info(p)}
  )
  h = hashlib.sha256(path.rstrip("/").encode())
  for name in sorted(files):
    info = files[name]
    digest = info.get("md5Hash") or info.get("etag")
    h.update(f"{name}:{info.get('size')}:{digest}".encode())
  root = cache_dir or os.path.join(
    os.environ.get(
      "BOOT_JAX_CACHE",
      os.path.join(os.path.expanduser("~"), ".cache", "boot_jax"),
    ),
    "remote",
  )
  target = os.path.join(root, h.hexdigest()[:24])
  local = os.path.join(target, basename(path))
  if os.path.exists(local):
    return local
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-")
  try:
    dest = os.path.join(tmp, basename(path))
    if is_dir:
      for name in files:
        rel = posixpath.relpath(name, p)
        out = os.path.join(dest, *rel.split("/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        _call("read", f"{path}/{rel}", fs.get_file, name, out)
    else:
      _call("read", path, fs.get_file, p, dest)
    try:
      os.rename(tmp, target)
    except OSError:
      if not os.path.exists(local):  # not another process's copy
        raise
  finally:
    if os.path.isdir(tmp):
      import shutil

      shutil.rmtree(tmp, ignore_errors=True)
  return local
