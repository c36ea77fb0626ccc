"""The work-directory lock reads whatever is in its file without a
traceback, and tells a live holder from a dead one whose pid was reused."""

import json
import os
import socket
import subprocess
import time

import pytest

from boot_jax.runtime import lock


def _write(workdir, info) -> None:
  workdir.mkdir(exist_ok=True)
  text = info if isinstance(info, str) else json.dumps(info)
  (workdir / lock.LOCK).write_text(text)


@pytest.mark.parametrize("content", ["[1, 2]", "3", '"x"', "{not json"])
def test_a_lock_that_holds_no_object_is_named(tmp_path, content):
  _write(tmp_path, content)
  with pytest.raises(lock.LockError, match="is unreadable"):
    lock.WorkdirLock(str(tmp_path)).acquire()
  assert (tmp_path / lock.LOCK).read_text() == content


@pytest.fixture
def sleeper():
  proc = subprocess.Popen(["sleep", "60"])
  yield proc
  proc.kill()
  proc.wait()


@pytest.mark.parametrize("since", ["garbage", 1e300, None, [1]])
def test_bad_times_give_one_line(tmp_path, sleeper, since):
  info = dict(host=socket.gethostname(), pid=sleeper.pid, heartbeat=since)
  if since is not None:
    info["since"] = since
  _write(tmp_path, info)
  with pytest.raises(lock.LockError, match="in use by another run") as e:
    lock.WorkdirLock(str(tmp_path)).acquire()
  assert "\n" not in str(e.value)


def test_a_reused_pid_is_not_the_holder(tmp_path, sleeper):
  # The lock was taken an hour before the live process with its pid began.
  info = dict(host=socket.gethostname(), pid=sleeper.pid)
  info["since"] = info["heartbeat"] = time.time() - 3600
  _write(tmp_path, info)
  held = lock.WorkdirLock(str(tmp_path))
  held.acquire()
  try:
    mine = json.loads((tmp_path / lock.LOCK).read_text())
    assert mine["pid"] == os.getpid()
  finally:
    held.release()


def test_a_live_holder_is_named(tmp_path, sleeper):
  time.sleep(1.5)  # the lock is taken after its holder started
  info = dict(host=socket.gethostname(), pid=sleeper.pid)
  info["since"] = info["heartbeat"] = time.time()
  _write(tmp_path, info)
  with pytest.raises(lock.LockError, match=f"pid {sleeper.pid} on this host"):
    lock.WorkdirLock(str(tmp_path)).acquire()
