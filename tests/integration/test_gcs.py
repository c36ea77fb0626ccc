"""Work directories on Cloud Storage, against local emulators (gcs_fixtures).

Train, kill and resume on `gs://test/...` through the real CLIs, in
subprocesses pointed at fake-gcs-server; orbax writes through tensorstore's
GCS driver (`TENSORSTORE_GCS_HTTP_URL`), everything else through gcsfs.
"""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import launch_local, saved_state, tb_tags, wait_for

from boot_jax.data import prompts
from boot_jax.runtime import checkpoint, lock, paths
from boot_jax.runtime import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 120
ARGS = [
  "--config",
  str(ROOT / "configs" / "gmm.py"),
  f"--config.train.steps={STEPS}",
  "--config.train.ckpt_every=40",
  "--config.train.log_every=10",
  "--config.train.batch_size=64",
  "--config.optim.ema_decay=0.99",
  "--config.eval.final=false",
]


def _use(env):
  """Points this process's clients at an emulator."""
  os.environ.update(env)
  import fsspec
  import gcsfs.core

  # gcsfs chooses its gRPC file system (which the emulators do not speak)
  # when imported without GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false.
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(
      protocol, gcsfs.core.GCSFileSystem, clobber=True
    )
  fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
  gcsfs.core.GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """fake-gcs-server for the module; yields the clients' environment."""
  try:
    import gcs_fixtures

    proc, env = gcs_fixtures.start_fake_gcs(str(tmp_path_factory.mktemp("gcs")))
  except (ImportError, OSError) as e:
    pytest.skip(f"no Cloud Storage emulator could start: {e}")
  old = {k: os.environ.get(k) for k in env}
  _use(env)
  yield env
  proc.kill()
  proc.wait()
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def _run(module, *args, env, timeout=600):
  proc = subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
    check=False,
  )
  return proc


def _train(workdir, env, *extra):
  proc = _run("boot_jax.train", *ARGS, *extra, "--workdir", workdir, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _start(workdir, env):
  return subprocess.Popen(
    [sys.executable, "-m", "boot_jax.train", *ARGS, "--workdir", workdir],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
  )


def _logged_steps(workdir) -> list[int]:
  path = paths.join(workdir, "metrics.jsonl")
  if not paths.exists(path):
    return []
  out = []
  for line in paths.read_text(path).splitlines():
    try:
      out.append(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError):
      pass
  return out


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local") / "run"
  _train(str(workdir), {})
  return workdir


@pytest.fixture(scope="module")
def bucket_run(gcs, local_run):
  """train -> SIGKILL after step 80 -> train again, on the bucket."""
  workdir = "gs://test/run"
  proc = _start(workdir, gcs)
  # Killed once step 40's checkpoint is finished and step 80 was logged:
  # most often while step 80's checkpoint is being written.
  ckpts = paths.join(workdir, "checkpoints")
  wait_for(
    lambda: (
      max(_logged_steps(workdir), default=0) >= 80
      and 40 in checkpoint.finished_steps(ckpts)
    ),
    proc,
  )
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # While (here: after) it ran, the bucket held readable TensorBoard
  # scalars and metrics.
  tb = paths.join(workdir, "tb")
  (events,) = paths.listdir(tb)
  seen = tb_tags(paths.read_bytes(paths.join(tb, events)))
  # Each row goes to metrics.jsonl, then to TensorBoard: the kill may fall
  # between the two.
  steps = [step for step, _ in seen["loss"]]
  assert max(steps) >= 70 and steps == sorted(steps)
  killed_in = sorted(checkpoint.finished_steps(ckpts))
  out = _train(workdir, gcs)
  assert f"resuming from the checkpoint of step {killed_in[-1]}" in out
  return workdir


def test_kill_and_resume_on_the_bucket_equals_a_local_run(
  bucket_run, local_run
):
  state = saved_state(bucket_run)
  assert int(state.step) == STEPS
  ref = saved_state(local_run)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Each logged step once, in order; the bucket's config.json as local.
  assert _logged_steps(bucket_run) == list(range(10, STEPS + 1, 10))
  assert workdir_lib.config_dict(
    workdir_lib.load_config(bucket_run)
  ) == workdir_lib.config_dict(workdir_lib.load_config(str(local_run)))
  # keep_checkpoints holds on the bucket too (orbax deletes the oldest).
  steps = sorted(
    checkpoint.finished_steps(paths.join(bucket_run, "checkpoints"))
  )
  assert steps == [40, 80, 120]
  # The lock was released (its object deleted) by the finished run.
  assert not paths.exists(paths.join(bucket_run, lock.LOCK))


def test_sigterm_saves_on_the_bucket(gcs):
  workdir = "gs://test/term"
  proc = _start(workdir, gcs)
  wait_for(lambda: max(_logged_steps(workdir), default=0) >= 20, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  step = int(err.split("received SIGTERM at step ")[1].split(";")[0])
  ckpts = paths.join(workdir, "checkpoints")
  assert max(checkpoint.finished_steps(ckpts)) == step
  assert int(saved_state(workdir).step) == step


def test_sample_evaluate_export_read_and_write_the_bucket(
  gcs, bucket_run, local_run, tmp_path
):
  out, local_out = "gs://test/outputs/s.npz", tmp_path / "s.npz"
  for work, where, env in ((bucket_run, out, gcs), (local_run, local_out, {})):
    proc = _run(
      "boot_jax.sample", "--workdir", work, "--out", where, "--num", 32, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
  remote = np.load(io.BytesIO(paths.read_bytes(out)))
  local = np.load(local_out)
  np.testing.assert_array_equal(remote["images"], local["images"])
  assert remote["images"].shape == (32, 2)

  proc = _run(
    "boot_jax.evaluate",
    "--workdir",
    bucket_run,
    "--num_samples",
    "256",
    env=gcs,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(paths.read_text(paths.join(bucket_run, "eval.json")))
  assert report["checkpoint_step"] == STEPS

  export = "gs://test/export"
  proc = _run(
    "boot_jax.export", "--workdir", bucket_run, "--out", export, env=gcs
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = set(paths.listdir(export))
  assert {"sampler.jax", "params.npz", "signature.json"} <= names
  sig = json.loads(paths.read_text(paths.join(export, "signature.json")))
  assert sig["checkpoint_step"] == STEPS

  # The exported artifact runs and reproduces the student.
  from jax import export as jax_export

  exp = jax_export.deserialize(
    bytearray(paths.read_bytes(paths.join(export, "sampler.jax")))
  )
  weights = np.load(
    io.BytesIO(paths.read_bytes(paths.join(export, "params.npz")))
  )
  flat = [weights[k] for k in sorted(weights.files)]
  images = exp.call(flat, remote["noise"][:8].astype(np.float32))
  np.testing.assert_allclose(
    np.asarray(images), remote["images"][:8], atol=1e-5
  )


def test_two_processes_on_the_bucket_equal_one(gcs, tmp_path):
  mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=4"]
  short = ["--config.train.steps=20", "--config.train.ckpt_every=10"]
  workdir = "gs://test/mp"
  proc = launch_local(workdir, *ARGS, *mesh, *short, env=gcs)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert _logged_steps(workdir) == [10, 20]
  single = tmp_path / "sp"
  _train(str(single), {}, *mesh, *short)

  def params(w):
    state = saved_state(w, one_device=True)
    return jax.device_get(state.params), int(state.step)

  # Restored here onto one device: a topology-changing restore from the
  # bucket (saved by 2 processes on a data=2 x fsdp=4 mesh).
  multi, step_m = params(workdir)
  ref, step_s = params(single)
  assert step_m == step_s == 20
  # As tests/integration/test_multiprocess.py: cross-process reductions, a
  # few ulp.
  diff = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(multi), jax.tree.leaves(ref), strict=True)
  )
  assert diff <= 1e-6


def _one_line_failure(proc):
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith(("I1", "W1"))]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


def test_missing_bucket_and_denied_writes_fail_in_one_line(gcs):
  proc = _run(
    "boot_jax.train", *ARGS, "--workdir", "gs://nobucket/run", env=gcs
  )
  line = _one_line_failure(proc)
  assert "bucket gs://nobucket does not exist" in line
  assert "step" not in proc.stdout
  proc = _run("boot_jax.train", *ARGS, "--workdir", "gs://", env=gcs)
  assert "'gs://' names no bucket" in _one_line_failure(proc)

  import gcs_fixtures

  server, env = gcs_fixtures.start_denying()
  try:
    proc = _run(
      "boot_jax.train", *ARGS, "--workdir", "gs://denied/run", env=env
    )
    line = _one_line_failure(proc)
    assert "gs://denied/run is not writable" in line and "Forbidden" in line
    assert "step" not in proc.stdout
    # Nothing was written: the bucket holds no object.
    from google.cloud import storage

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      client = storage.Client(project="test")
      assert list(client.list_blobs(gcs_fixtures.DENIED)) == []
    finally:
      for k, v in old.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  finally:
    server.stop()


def test_lock_on_the_bucket(gcs, monkeypatch):
  workdir = "gs://test/locked"
  other = {
    "host": "another-vm",
    "pid": 1,
    "since": time.time(),
    "heartbeat": time.time(),
  }
  path = paths.join(workdir, lock.LOCK)
  paths.write_atomic(path, json.dumps(other))
  with pytest.raises(lock.LockError, match="in use by a run on host another"):
    lock.WorkdirLock(workdir).acquire()
  # Silent for longer than STALE_S: a preempted VM's lock is taken over.
  other["heartbeat"] -= lock.STALE_S + 1
  paths.write_atomic(path, json.dumps(other))
  monkeypatch.setattr(lock, "HEARTBEAT_S", 0.1)
  with lock.WorkdirLock(workdir) as held:
    assert held.held
    mine = lock.holder(workdir)
    assert mine["pid"] == os.getpid()
    # The holder keeps its heartbeat fresh.
    t0 = time.time()
    while lock.holder(workdir)["heartbeat"] == mine["heartbeat"]:
      assert time.time() - t0 < 10, "the heartbeat was never refreshed"
      time.sleep(0.05)
    # A second taker finds this live holder.
    with pytest.raises(lock.LockError, match="another run"):
      lock.WorkdirLock(workdir).acquire()
  assert lock.holder(workdir) is None


def test_grids_and_atomic_writes_on_the_bucket(gcs):
  images = np.linspace(-1, 1, 4 * 8 * 8 * 3).reshape(4, 8, 8, 3)
  path = "gs://test/g/samples/a.png"
  grid = workdir_lib.save_image_grid(images, path)
  from PIL import Image

  with Image.open(io.BytesIO(paths.read_bytes(path))) as img:
    np.testing.assert_array_equal(np.asarray(img), grid)
  np.testing.assert_array_equal(grid, workdir_lib.image_grid(images, scale=4))
  # A prompt file on the bucket is read through a local copy.

  paths.write_atomic("gs://test/g/p.txt", "a cat\na dog\na cat\n")
  assert prompts.read_prompts("gs://test/g/p.txt") == [
    "a cat",
    "a dog",
  ]


def test_teacher_folder_on_the_bucket(gcs, tmp_path, monkeypatch):
  """A diffusers folder on gs:// loads to the same teacher as its local
  copy; it is downloaded once, and again only when an object changes."""
  import gcsfs.core
  import ml_collections

  from boot_jax import teachers, testing

  monkeypatch.setenv("BOOT_JAX_CACHE", str(tmp_path / "cache"))
  testing.make_folder(tmp_path)
  local = tmp_path / "sd"
  fs = gcsfs.core.GCSFileSystem()
  fs.put(str(local), "test/models/", recursive=True)
  fs.invalidate_cache()

  def build(path):
    return teachers.build_teacher(
      ml_collections.ConfigDict(
        dict(name="sd", path=str(path), resolution=16, prediction=None)
      )
    )

  remote = build("gs://test/models/sd")
  ref = build(local)
  for a, b in zip(
    jax.tree.leaves(remote.params), jax.tree.leaves(ref.params), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  first = paths.local_copy("gs://test/models/sd")
  assert first.startswith(str(tmp_path / "cache"))
  assert paths.local_copy("gs://test/models/sd") == first  # reused
  paths.write_atomic("gs://test/models/sd/model_index.json", "{}")
  assert paths.local_copy("gs://test/models/sd") != first  # changed: again
  with pytest.raises(Exception, match="does not exist"):
    build("gs://test/models/none")
