"""An advisory lock on a work directory: one trainer at a time.

`W/.lock` is created with O_EXCL (atomic on local and network file
systems) and holds the holder's host, pid and start time as JSON. A lock
whose holder is a dead process on this host is stale and is taken over; a
live holder, or a holder on another host (whose liveness cannot be seen
from here), is reported in one line. The lock is released (the file
removed) on every exit path of the `with` block, and by an exit handler if
the process ends otherwise; a SIGKILL leaves the file, and the next run on
the same host finds its pid dead.

On an object store (`gs://`) the lock is an object created with the
precondition "does not exist yet" (paths.create_exclusive). A holder there
usually runs on another VM, whose processes cannot be seen, so the holder
rewrites the object's `heartbeat` every HEARTBEAT_S seconds and a lock not
refreshed for STALE_S seconds is stale: a preempted VM's run can be resumed
from a new VM after that wait, or at once by deleting the object.

Only the lead process of a multi-process run takes it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import math
import os
import socket
import threading
import time

from boot_jax.runtime import paths

LOCK = ".lock"
HEARTBEAT_S = 60.0
STALE_S = 300.0


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


def _started_after(pid: int, when: float) -> bool:
  """Whether process `pid` started after `when` (seconds since the epoch):
  then it is not the process that took a lock at `when` (its pid was
  reused). False where the system does not say (not Linux)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      # Field 22, counted after the parenthesised command name.
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat", encoding="ascii") as f:
      boot = next(int(x.split()[1]) for x in f if x.startswith("btime"))
  except (OSError, ValueError, IndexError, StopIteration):
    return False
  started = boot + ticks / os.sysconf("SC_CLK_TCK")
  return started > when + 1.0  # /proc's times are rounded to ticks


def _number(value, default: float = 0.0) -> float:
  """A lock field as a finite number (`default` for garbage)."""
  try:
    out = float(value)
  except (TypeError, ValueError, OverflowError):
    return default
  return out if math.isfinite(out) else default


def _when(value) -> str:
  """A lock's time field for messages; 'an unknown time' for garbage."""
  t = _number(value, -1.0)
  try:
    return time.ctime(t) if t >= 0 else "an unknown time"
  except (OverflowError, ValueError, OSError):
    return "an unknown time"


def _read(path: str) -> dict | None:
  """The lock's fields; {} while being written or when it holds no JSON
  object (garbage); None when there is no lock."""
  try:
    info = json.loads(paths.read_text(path))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # being written, or garbage
  return info if isinstance(info, dict) else {}


def holder(workdir: str) -> dict | None:
  """The lock's holder (`host`, `pid`, `since`), or None when unlocked."""
  return _read(paths.join(workdir, LOCK))


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the lock for the block.

  Args:
    workdir: the work directory (created if missing).
    enabled: False makes it a no-op (non-lead processes).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = paths.join(paths.abspath(workdir), LOCK)
    self.remote = paths.is_remote(self.path)
    self.enabled = enabled
    self.held = False
    self.created = False
    self._me = None
    self._stop = threading.Event()
    self._beat = None

  def acquire(self) -> None:
    if not self.enabled or self.held:
      return
    directory = paths.dirname(self.path)
    if not self.remote and not os.path.isdir(directory):
      os.makedirs(directory)
      self.created = True
    now = time.time()
    self._me = dict(
      host=socket.gethostname(), pid=os.getpid(), since=now, heartbeat=now
    )
    for _ in range(20):
      try:
        made = paths.create_exclusive(
          self.path, json.dumps(self._me).encode("utf-8")
        )
      except OSError as e:
        if self.remote or e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
          reason = e.strerror if e.strerror else str(e)
          raise LockError(f"cannot lock {directory}: {reason}") from None
        raise
      if not made:
        self._check_holder()
        continue  # the stale lock was removed: try again
      self.held = True
      atexit.register(self.release)
      if self.remote:
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()
      return
    raise LockError(f"cannot take the lock {self.path}")

  def _heartbeat(self) -> None:
    """Refreshes a remote lock until released (see the module doc)."""
    while not self._stop.wait(HEARTBEAT_S):
      self._me["heartbeat"] = time.time()
      try:
        paths.write_atomic(self.path, json.dumps(self._me))
      except OSError:
        pass  # a passing outage: the next beat tries again

  def _check_holder(self) -> None:
    """Raises LockError for a live (or unknowable) holder; removes a stale
    lock (a dead process on this host, or a remote lock without a recent
    heartbeat)."""
    info = _read(self.path)
    if info is None:
      return  # released meanwhile
    workdir = paths.dirname(self.path)
    if not info:
      # Just created by another process and not yet written: a live one.
      time.sleep(0.05)
      info = _read(self.path) or {}
      if not info:
        raise LockError(
          f"{workdir} is locked ({self.path} is unreadable); if no run is "
          "using it, delete that file"
        )
    host, pid = info.get("host"), info.get("pid")
    since = _when(info.get("since"))
    if host == socket.gethostname() and isinstance(pid, int):
      reused = _started_after(pid, _number(info.get("since"), float("inf")))
      if not _alive(pid) or reused:
        self._remove_stale()
        return
      raise LockError(
        f"{workdir} is in use by another run (pid {pid} on this host, "
        f"since {since}); wait for it or use another --workdir"
      )
    if self.remote:
      age = time.time() - _number(info.get("heartbeat"))
      if age > STALE_S:
        self._remove_stale()
        return
      raise LockError(
        f"{workdir} is in use by a run on host {host} (pid {pid}, alive "
        f"{age:.0f} s ago); it is taken over once silent for {STALE_S:.0f} "
        f"s, or delete {self.path} if that run is gone"
      )
    raise LockError(
      f"{workdir} is in use by a run on host {host} (pid {pid}); if that "
      f"run is gone, delete {self.path}"
    )

  def _remove_stale(self) -> None:
    with contextlib.suppress(FileNotFoundError):
      paths.remove(self.path)

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    self._stop.set()
    if self._beat is not None:
      self._beat.join(timeout=30)
    info = _read(self.path)
    if (
      info
      and info.get("pid") == os.getpid()
      and info.get("host") == socket.gethostname()
    ):
      with contextlib.suppress(FileNotFoundError, OSError):
        paths.remove(self.path)
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
