"""An advisory lock on a work directory: one trainer at a time.

`W/.lock` is created with O_EXCL (atomic on local and network file
systems) and holds the holder's host, pid and start time as JSON. A lock
whose holder is a dead process on this host is stale and is taken over; a
live holder, or a holder on another host (whose liveness cannot be seen
from here), is reported in one line. The lock is released (the file
removed) on every exit path of the `with` block, and by an exit handler if
the process ends otherwise; a SIGKILL leaves the file, and the next run on
the same host finds its pid dead.

Only the lead process of a multi-process run takes it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import socket
import time

LOCK = ".lock"


class LockError(OSError):
  """The work directory is in use by another run."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # being written, or garbage


def holder(workdir: str) -> dict | None:
  """The lock's holder (`host`, `pid`, `since`), or None when unlocked."""
  return _read(os.path.join(workdir, LOCK))


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the lock for the block.

  Args:
    workdir: the work directory (created if missing).
    enabled: False makes it a no-op (non-lead processes).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(os.path.abspath(workdir), LOCK)
    self.enabled = enabled
    self.held = False
    self.created = False

  def acquire(self) -> None:
    if not self.enabled or self.held:
      return
    directory = os.path.dirname(self.path)
    if not os.path.isdir(directory):
      os.makedirs(directory)
      self.created = True
    me = dict(host=socket.gethostname(), pid=os.getpid(), since=time.time())
    for _ in range(20):
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        self._check_holder()
        continue  # the stale lock was removed: try again
      except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
          raise LockError(
            f"cannot lock {os.path.dirname(self.path)}: {e.strerror}"
          ) from None
        raise
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      self.held = True
      atexit.register(self.release)
      return
    raise LockError(f"cannot take the lock {self.path}")

  def _check_holder(self) -> None:
    """Raises LockError for a live (or unknowable) holder; removes a stale
    lock of a dead process on this host."""
    info = _read(self.path)
    if info is None:
      return  # released meanwhile
    host, pid = info.get("host"), info.get("pid")
    workdir = os.path.dirname(self.path)
    if not info:
      # Just created by another process and not yet written: a live one.
      time.sleep(0.05)
      info = _read(self.path) or {}
      host, pid = info.get("host"), info.get("pid")
      if not info:
        raise LockError(
          f"{workdir} is locked ({self.path} is unreadable); if no run is "
          "using it, delete that file"
        )
    if host == socket.gethostname() and isinstance(pid, int):
      if not _alive(pid):
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)  # stale: its process is gone
        return
      raise LockError(
        f"{workdir} is in use by another run (pid {pid} on this host, "
        f"since {time.ctime(info.get('since', 0))}); wait for it or use "
        "another --workdir"
      )
    raise LockError(
      f"{workdir} is in use by a run on host {host} (pid {pid}); if that "
      f"run is gone, delete {self.path}"
    )

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    info = _read(self.path)
    if info and info.get("pid") == os.getpid():
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    if self.created:
      # A run that failed before writing anything leaves no directory.
      with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(self.path))

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
    return False
