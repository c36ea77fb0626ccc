"""Test setup: 8 fake CPU devices and a persistent compilation cache, the
helpers every test module shares, and the markers of the two folders.

tests/unit/ holds fast in-process tests of every module; tests/integration/
runs the programs end to end (subprocesses, training runs) and its tests
are marked `slow`: `pytest -m "not slow"` runs the unit tests alone.

This module runs before any test module imports jax, so the XLA flag takes
effect for the whole session.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for this session and every program it
# starts (the end-to-end tests' subprocesses inherit these variables), so a
# program compiled once, by a test or a subprocess, is not compiled again.
_CACHE = os.environ.setdefault(
  "BOOT_JAX_TEST_CACHE", os.path.expanduser("~/.cache/boot_jax_test_jit")
)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from boot_jax import testing  # noqa: E402
from boot_jax.runtime import checkpoint, paths  # noqa: E402
from boot_jax.runtime import workdir as workdir_lib  # noqa: E402
from boot_jax.training import trainer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


# The libraries the references come from: their versions head the report.
REFERENCE_LIBRARIES = (
  "jax",
  "flax",
  "torch",
  "diffusers",
  "transformers",
  "tokenizers",
)


def pytest_terminal_summary(terminalreporter):
  """Ends the report with one line naming the versions the session ran
  against (printed at every verbosity)."""
  import importlib.metadata

  found = []
  for name in REFERENCE_LIBRARIES:
    try:
      found.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      found.append(f"{name} absent")
  terminalreporter.write_line("references: " + ", ".join(found))


def run_module(module, *args, cwd=None, timeout=900, env=None):
  """Runs `python -m module args` and returns (returncode, stdout, stderr).

  The child inherits this session's 8 fake CPU devices.
  """
  import subprocess
  import sys

  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  proc = subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=full_env,
    timeout=timeout,
  )
  return proc.returncode, proc.stdout, proc.stderr


def run_sample(workdir, out, *args, **kwargs):
  """`python -m boot_jax.sample --workdir workdir --out out args` through
  `run_module` (its keyword arguments as there)."""
  return run_module(
    "boot_jax.sample", "--workdir", workdir, "--out", out, *args, **kwargs
  )


def free_port() -> int:
  """A TCP port on localhost that nothing listens on now."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_local(workdir, *train_args, env=None, popen=False):
  """`launch/local.sh`: 2 processes of 4 CPU devices each running
  `train train_args --workdir workdir` (stdout and stderr together)."""
  cmd = ["bash", str(ROOT / "launch" / "local.sh"), "--processes", "2"]
  cmd += ["--devices-per-process", "4", "--port", str(free_port()), "--"]
  cmd += [*map(str, train_args), "--workdir", str(workdir)]
  env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
  env.pop("XLA_FLAGS", None)  # the processes choose their device counts
  kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if popen:
    return subprocess.Popen(cmd, env=env, **kw)
  return subprocess.run(cmd, env=env, timeout=600, check=False, **kw)


def wait_for(pred, proc, timeout=300):
  """Polls `pred()` until true; fails if `proc` exits first or on timeout."""
  import time

  t0 = time.time()
  while not pred():
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() - t0 < timeout, "timed out"
    time.sleep(0.02)


def saved_state(workdir, one_device=False):
  """The latest checkpointed train state of a BOOT work directory (local or
  gs://), restored on the run's own mesh or on one device."""
  config = workdir_lib.load_config(str(workdir))
  if one_device:
    config.mesh.data, config.mesh.fsdp = 1, 1
  setup = trainer.setup(config)
  return checkpoint.read_item(
    paths.join(str(workdir), "checkpoints"), "state", setup.abstract_state()
  )


def run_module_measured(
  module, *args, cwd=None, timeout=900, marker=None, env=None
):
  """`run_module` that also measures the child's peak resident memory.

  Returns `(returncode, stdout, stderr, peak_mib, seconds)`: the peak is
  the child's own VmHWM at exit; `seconds` is the time from the start to
  the first stdout line containing `marker` (None if never seen).
  """
  import subprocess
  import tempfile
  import time

  env = dict(
    os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {})
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (root, env.get("PYTHONPATH")) if p
  )
  start = time.monotonic()
  seen = None
  lines = []
  with tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(
      testing.peak_rss_argv(module, *args),
      stdout=subprocess.PIPE,
      stderr=err,
      text=True,
      cwd=cwd,
      env=env,
    )
    for line in proc.stdout:
      lines.append(line)
      if seen is None and marker is not None and marker in line:
        seen = time.monotonic() - start
      if time.monotonic() - start > timeout:
        proc.kill()
    code = proc.wait()
    err.seek(0)
    stderr = err.read()
  return code, "".join(lines), stderr, testing.peak_rss_mib(stderr), seen


def train_mixture(workdir, *overrides) -> None:
  """A short run of configs/gmm.py in `workdir` (2 steps, no final
  evaluation), through the train program."""
  code, _, err = run_module(
    "boot_jax.train",
    "--config",
    str(ROOT / "configs" / "gmm.py"),
    "--config.train.steps=2",
    "--config.train.batch_size=64",
    "--config.eval.final=false",
    *overrides,
    "--workdir",
    workdir,
  )
  assert code == 0, err[-3000:]


@pytest.fixture
def no_datasets(monkeypatch):
  """Makes every dataset loader raise; returns the list of calls, which a
  data-free test asserts empty at the end (a loader's exception may be
  caught on the way)."""
  from boot_jax.data import datasets

  calls = []

  def forbidden(*args, **kwargs):
    calls.append(args)
    raise AssertionError("distillation read a dataset")

  for name in ("load_dataset", "load_digits", "load_image_folder", "load_idx"):
    monkeypatch.setattr(datasets, name, forbidden)
  return calls


def error_lines(stderr: str) -> list[str]:
  """The `error: ...` lines of a CLI's stderr (absl may log other lines)."""
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def tree_hash(path) -> str:
  """A hash of every file's relative path and bytes under `path`."""
  import hashlib

  h = hashlib.sha256()
  for p in sorted(path.rglob("*")):
    if p.is_file():
      h.update(str(p.relative_to(path)).encode())
      h.update(p.read_bytes())
  return h.hexdigest()


def tb_tags(events: bytes) -> dict:
  """Tag -> steps of the summaries (scalars, images) in one TensorBoard
  event file's bytes (TFRecord framing: length, its CRC, data, its CRC;
  tensorboardX's own Event protos decode the data)."""
  import struct

  from tensorboardX.proto import event_pb2

  out, pos = {}, 0
  while pos + 12 <= len(events):
    (length,) = struct.unpack("<Q", events[pos : pos + 8])
    data = events[pos + 12 : pos + 12 + length]
    pos += 12 + length + 4
    event = event_pb2.Event.FromString(data)
    for v in event.summary.value:
      kind = "image" if v.HasField("image") else "scalar"
      out.setdefault(v.tag, []).append((event.step, kind))
  return out


# A safetensors file of the FID Inception's keys with random weights.
random_weights_file = testing.random_inception_weights


_RUN_EXPORT = """
import importlib.util, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]
sys.path[:] = [p for p in sys.path if p and "{root}" not in p]
sys.modules["boot_jax"] = None
assert importlib.util.find_spec("boot_jax") is None
import numpy as np
from jax import export
exp = export.deserialize(bytearray(open("sampler.jax", "rb").read()))
weights = np.load("params.npz")
params = [weights[f"p{{i:05d}}"] for i in range(len(weights.files))]
args = [np.load(a) for a in sys.argv[1:-1]]
np.save(sys.argv[-1], np.asarray(exp.call(params, *args)))
"""


def assert_release_samples(got, want):
  """Samples computed today equal those a release saved, as far as the
  machine allows.

  The noise (integer random bits) must be equal bit for bit. The images are
  float32 XLA programs whose matmuls sum in an order chosen for the CPU
  (vector width, cache blocking): bit for bit on the machine kind that saved
  them, a few ulp apart on another kind (measured: 1 ulp, 6e-8, on 2 of 32
  numbers on an AVX-512 FP16 Xeon). 1e-6 is about 16 ulp at the samples'
  scale (|x| < 1), far below any change of the program.
  """
  np.testing.assert_array_equal(got["noise"], want["noise"])
  np.testing.assert_allclose(got["images"], want["images"], rtol=0, atol=1e-6)


def run_export(out_dir, inputs, result):
  """Runs DIR's artifact on .npy inputs in a clean process -> array."""
  script = _RUN_EXPORT.format(root=str(ROOT))
  proc = subprocess.run(
    [sys.executable, "-c", script, *map(str, inputs), str(result)],
    capture_output=True,
    text=True,
    cwd=out_dir,
    env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=""),
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return np.load(result)


def perturbed_student(teacher, guided: bool):
  """A student of `teacher` (the default student config) whose parameters
  are the teacher's plus N(0, 0.02^2) noise: an export that carried the
  teacher's weights (or none) instead gives other images."""
  import jax

  from boot_jax.config import defaults
  from boot_jax.distill import student as student_lib

  config = defaults.base_config().student
  student, params_fn = student_lib.build_student(
    teacher, config, jax.random.key(0), guided=guided
  )
  params = jax.jit(params_fn)(teacher.params)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [
    p + 0.02 * jax.random.normal(k, p.shape, p.dtype)
    for p, k in zip(leaves, keys, strict=True)
  ]
  return student, jax.tree.unflatten(tree, leaves)


def check_refinement_setup(config, guidance: float) -> None:
  """Two refinement steps of a text-to-image `config` (boot.refine on,
  train.steps 0, a data=2, fsdp=4 mesh): the fake network starts as the
  teacher's UNet, its state and both Adams are split over fsdp, and the
  steps are finite and move the student."""
  import jax

  from boot_jax.distill import refine
  from boot_jax.runtime import sharding
  from boot_jax.training import trainer

  config.train.batch_size = 8
  config.train.steps = 0
  config.boot.refine = True
  config.refine.steps = 2
  config.mesh.data, config.mesh.fsdp = 2, 4
  s = trainer.setup(config)
  assert refine.guidance(config) == guidance
  state = s.init_state()
  start = jax.device_get(state.params)
  for a, b in zip(
    jax.tree.leaves(jax.device_get(state.refine["fake"])),
    jax.tree.leaves(jax.device_get(s.teacher.params)),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(a, np.float32), b)
  for name in ("fake", "fake_opt", "student_opt"):
    tree = state.refine[name]
    counts = sharding.bytes_per_device(tree).values()
    assert max(counts) <= 0.3 * sharding.tree_bytes(tree), name
  state, history = trainer.run(s, state)
  assert int(state.step) == 2
  leaves = jax.tree.leaves(jax.device_get(state.params))
  assert all(np.all(np.isfinite(x)) for x in leaves)
  moved = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(leaves, jax.tree.leaves(start), strict=True)
  )
  assert moved > 0.0
  assert history and all(np.isfinite(row["loss"]) for row in history)
  assert all(np.isfinite(row["loss_fake"]) for row in history)


def pytest_collection_modifyitems(config, items):
  """Marks every test under tests/integration/ `slow`."""
  del config
  for item in items:
    if "integration" in pathlib.Path(str(item.fspath)).parts:
      item.add_marker(pytest.mark.slow)
