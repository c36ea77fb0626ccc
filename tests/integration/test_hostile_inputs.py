"""Hostile inputs and faults: one line and a non-zero exit (or the right
behaviour), and nothing saved before is lost or changed.

Most cases use one finished mixture run (`finished`); after the cases that
touch it, its latest checkpoint must still sample bit for bit as before.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import error_lines, run_module, run_sample, tree_hash

from boot_jax import testing
from boot_jax.data import datasets, prompts
from boot_jax.sampling import inference
from boot_jax.teachers.sd import loading, sd_teacher

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
GMM = os.path.join(ROOT, "configs", "gmm.py")
BASE = [
  "--config",
  GMM,
  "--config.train.batch_size=64",
  "--config.train.log_every=10",
  "--config.train.ckpt_every=10",
  "--config.eval.final=false",
  "--config.mesh.data=1",
]


def _train(work, *extra):
  return run_module("boot_jax.train", *BASE, *extra, "--workdir", work)


def _one_line(code, err, expected):
  lines = error_lines(err)
  assert code != 0, err[-2000:]
  assert len(lines) == 1, err[-2000:]
  assert expected in lines[0], lines
  assert "Traceback" not in err, err[-2000:]


def _sample(work, out, *extra):
  return run_sample(work, out, "--num", "64", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 30-step run (checkpoints 10, 20, 30) and its samples."""
  root = tmp_path_factory.mktemp("finished")
  work = root / "w"
  code, _, err = _train(work, "--config.train.steps=30")
  assert code == 0, err[-3000:]
  code, _, err = _sample(work, root / "base.npz")
  assert code == 0, err[-3000:]
  _FINISHED_HASH[str(work)] = tree_hash(work)
  return work, np.load(root / "base.npz")["images"]


_FINISHED_HASH = {}


@pytest.fixture(autouse=True)
def finished_run_unchanged(request):
  """After each case given the finished run: its files are byte-identical
  to what the run wrote (no refused command changed anything)."""
  yield
  if "finished" in request.fixturenames:
    work, _ = request.getfixturevalue("finished")
    assert tree_hash(work) == _FINISHED_HASH[str(work)], request.node.name


def _still_samples(finished, tmp_path):
  work, base = finished
  code, _, err = _sample(work, tmp_path / "again.npz")
  assert code == 0, err[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / "again.npz")["images"], base)


def _steps(work):
  return sorted(
    int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()
  )


def test_retention(finished, tmp_path):
  """1. keep_checkpoints=0 is refused; fewer kept on resume prunes only
  older steps."""
  work, _ = finished
  code, _, err = _train(
    work, "--config.train.steps=30", "--config.train.keep_checkpoints=0"
  )
  _one_line(code, err, "keep_checkpoints must be >= 1")
  assert _steps(work) == [10, 20, 30]
  _still_samples(finished, tmp_path)
  copy = tmp_path / "copy"
  shutil.copytree(work, copy)
  code, _, err = _train(
    copy, "--config.train.steps=40", "--config.train.keep_checkpoints=1"
  )
  assert code == 0, err[-3000:]
  assert _steps(copy) == [40]


def _final_params(work):

  _, params, step = inference.load(str(work))
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(params)], step


def test_two_trainers_on_one_workdir(tmp_path):
  """2. The second trainer is refused within 5 s; the first ends equal to a
  lone run, bit for bit."""
  work = tmp_path / "w"
  args = [*BASE, "--config.train.steps=400", "--workdir", str(work)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  first = subprocess.Popen(
    [sys.executable, "-m", "boot_jax.train", *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
  )
  try:
    deadline = time.time() + 120
    while not (work / ".lock").exists():
      assert first.poll() is None, first.communicate()[1][-3000:]
      assert time.time() < deadline, "the first trainer never took the lock"
      time.sleep(0.05)
    t0 = time.time()
    code, _, err = run_module(
      "boot_jax.train", *args, "--config.optim.lr=0.01", timeout=60
    )
    refused_after = time.time() - t0
    out, err_first = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
  _one_line(code, err, "in use by another run")
  assert refused_after < 5.0, refused_after
  assert first.returncode == 0, err_first[-3000:]
  assert not (work / ".lock").exists()  # released on exit
  lone = tmp_path / "lone"
  code, _, err = _train(lone, "--config.train.steps=400")
  assert code == 0, err[-3000:]
  a, step_a = _final_params(work)
  b, step_b = _final_params(lone)
  assert step_a == step_b == 400
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


def test_stale_lock_of_a_dead_process_is_taken_over(finished, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(finished[0], work)
  dead = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"],
    capture_output=True,
    text=True,
    check=True,
  )
  import socket

  (work / ".lock").write_text(
    json.dumps(dict(host=socket.gethostname(), pid=int(dead.stdout), since=0))
  )
  code, _, err = _train(work, "--config.train.steps=30")
  assert code == 0, err[-3000:]
  (work / ".lock").write_text(json.dumps(dict(host="elsewhere", pid=1)))
  code, _, err = _train(work, "--config.train.steps=30")
  _one_line(code, err, "in use by a run on host elsewhere")


def test_sample_refuses_bad_guidance_and_noise(finished, tmp_path):
  """3, 7, 8: non-finite guidance or noise, .npz/empty/complex noise,
  --noise with --num, batch sizes, --out a directory."""
  work, _ = finished
  nan = np.zeros((4, 2), np.float32)
  nan[1, 0] = np.nan
  np.save(tmp_path / "nan.npy", nan)
  np.save(tmp_path / "inf.npy", np.full((4, 2), np.inf, np.float32))
  np.savez(tmp_path / "eps.npz", eps=np.zeros((4, 2), np.float32))
  np.save(tmp_path / "empty.npy", np.zeros((0, 2), np.float32))
  np.save(tmp_path / "complex.npy", np.zeros((4, 2), np.complex64))
  np.save(tmp_path / "ok.npy", np.zeros((4, 2), np.float32))
  np.save(tmp_path / "huge.npy", np.full((4, 2), 1e30, np.float32))
  (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-8])
  out = tmp_path / "s.npz"
  cases = [
    (["--guidance", "inf"], "finite"),
    (["--noise", tmp_path / "nan.npy"], "NaN or infinite"),
    (["--noise", tmp_path / "inf.npy"], "NaN or infinite"),
    (["--noise", tmp_path / "eps.npz"], "not a .npy array"),
    (["--noise", tmp_path / "empty.npy"], "has no rows"),
    (["--noise", tmp_path / "complex.npy"], "expected real floats"),
    (["--noise", tmp_path / "huge.npy"], "not standard normal noise"),
    (["--noise", tmp_path / "cut.npy"], "is truncated"),
    (["--batch_size", "-4"], "--batch_size must be >= 1"),
    (["--seed", "-1"], "--seed must be in"),
  ]
  for extra, expected in cases:
    code, _, err = run_module(
      "boot_jax.sample", "--workdir", work, "--out", out, *extra
    )
    _one_line(code, err, expected)
    assert not out.exists()
  code, _, err = _sample(work, out, "--noise", tmp_path / "ok.npy")
  _one_line(code, err, "give --noise or --num, not both")
  code, _, err = run_sample(work, tmp_path)
  _one_line(code, err, "is a directory")
  code, _, err = run_sample(work, tmp_path / "s.txt")
  _one_line(code, err, "must end in .npz")
  assert not (tmp_path / "s.txt").exists()


def test_huge_sample_is_refused_up_front(finished, tmp_path):
  """4. What cannot fit on the disk is refused, with the size, at once."""
  work, _ = finished
  code, _, err = run_sample(work, tmp_path / "s.npz", "--num", str(10**12))
  _one_line(code, err, "GiB free")
  assert not list(tmp_path.iterdir())


def test_ten_million_samples_stream(finished, tmp_path):
  """`--num 10000000` stays under 1 GB resident and its first 256 rows
  equal `--num 256`. One device and a batch of 8192: memory is then the
  runtime plus one batch's activations (measured 0.51 GiB; with a batch of
  65536 on 8 fake devices the activations alone took ~0.5 GiB more)."""
  work, _ = finished
  big = tmp_path / "big.npz"
  proc = subprocess.run(
    testing.peak_rss_argv(
      "boot_jax.sample",
      *("--workdir", work, "--out", big),
      *("--num", 10000000, "--batch_size", 8192),
    ),
    capture_output=True,
    text=True,
    env=dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
    ),
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  peak = testing.peak_rss_mib(proc.stderr)
  print(f"sample --num 10000000: peak RSS {peak / 1024:.2f} GiB")
  assert peak < 1024, peak  # 1 GiB
  code, _, err = run_sample(work, tmp_path / "small.npz", "--num", "256")
  assert code == 0, err[-3000:]
  small = np.load(tmp_path / "small.npz")
  with np.load(big, mmap_mode="r") as f:
    assert f["images"].shape == (10_000_000, 2)
    np.testing.assert_array_equal(f["noise"][:256], small["noise"])
    # The same eps through the same network; XLA's kernels for a batch of
    # 8192 on one device and of 256 on eight round differently (~1 ulp).
    np.testing.assert_allclose(
      f["images"][:256], small["images"], rtol=0, atol=1e-6
    )


def test_nan_skip_policy_fails_when_most_steps_skip(tmp_path):
  """5. nan_policy=skip with lr 1e30 ends non-zero; nothing samples NaN."""
  work = tmp_path / "w"
  code, _, err = _train(
    work,
    "--config.train.steps=20",
    "--config.train.nan_policy=skip",
    "--config.optim.lr=1e30",
  )
  _one_line(code, err, "max_skipped_fraction")
  code, _, err = _sample(work, tmp_path / "s.npz")
  assert code != 0 and len(error_lines(err)) == 1, err[-2000:]
  assert not (tmp_path / "s.npz").exists()


def test_guidance_is_checked_against_the_student(tmp_path):
  """6. A fixed-w student refuses another w; a guided one refuses w outside
  its range unless --allow_extrapolation."""
  fixed, guided = tmp_path / "fixed", tmp_path / "guided"
  for work, preset in ((fixed, "circle_cond"), (guided, "circle_guided")):
    code, _, err = run_module(
      "boot_jax.train",
      "--config",
      f"{GMM}:{preset}",
      "--config.train.steps=2",
      "--config.eval.final=false",
      "--config.mesh.data=1",
      "--workdir",
      work,
    )
    assert code == 0, err[-3000:]
  out = tmp_path / "s.npz"
  code, _, err = _sample(fixed, out, "--guidance", "4")
  _one_line(code, err, "distilled at a fixed guidance w=2.0")
  code, _, err = _sample(fixed, out, "--guidance", "4", "--sampler", "teacher")
  assert code == 0, err[-2000:]
  code, _, err = _sample(guided, out, "--guidance", "100")
  _one_line(code, err, "outside [0.5, 4.5]")
  code, _, err = _sample(
    guided, out, "--guidance", "100", "--allow_extrapolation"
  )
  assert code == 0, err[-2000:]


def test_failed_run_keeps_the_config_and_checkpoints(finished, tmp_path):
  """8. A run with a changed config that fails before saving leaves
  config.json as it was, so the normal resume still works."""
  work = tmp_path / "w"
  shutil.copytree(finished[0], work)
  before = (work / "config.json").read_bytes()
  code, _, err = _train(
    work,
    "--config.train.steps=40",
    "--config.optim.lr=1e30",
    "--config.train.allow_config_change=true",
  )
  _one_line(code, err, "non-finite")
  assert (work / "config.json").read_bytes() == before
  assert _steps(work) == [10, 20, 30]
  code, out, err = _train(work, "--config.train.steps=40")
  assert code == 0, err[-3000:]
  assert "resuming from the checkpoint of step 30" in out


def test_config_errors_name_the_bad_key(tmp_path):
  """8. Unknown keys name the bad override only; negative periods refused."""
  code, _, err = _train(
    tmp_path / "w", "--config.train.steps=3", "--config.trian.lr=1"
  )
  _one_line(code, err, "unknown config key 'trian' in --config.trian.lr")
  assert "steps" not in error_lines(err)[0]
  code, _, err = _train(tmp_path / "w", "--config.train.ckpt_every=-3")
  _one_line(code, err, "train.ckpt_every must be >= 0")
  assert not (tmp_path / "w").exists()


def test_corrupt_checkpoint_metadata_is_named(finished, tmp_path):
  """8. Garbage in a checkpoint's metadata is reported as such."""
  work = tmp_path / "w"
  shutil.copytree(finished[0], work)
  (work / "checkpoints" / "30" / "state" / "_METADATA").write_text("garbage")
  code, _, err = _sample(work, tmp_path / "s.npz")
  _one_line(code, err, "unreadable metadata")
  code, _, err = _train(work, "--config.train.steps=30")
  _one_line(code, err, "unreadable metadata")


def test_disk_full_during_a_save(finished, tmp_path):
  """7. A full disk while saving: one line that says so first, the last
  good checkpoint kept and resumable once there is space."""
  mnt = tmp_path / "small"
  mnt.mkdir()
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
    capture_output=True,
    check=False,
  )
  if mounted.returncode != 0:
    pytest.skip("cannot mount a small tmpfs here (needs root)")
  try:
    work = mnt / "w"
    code, _, err = _train(work, "--config.train.steps=60")
    _one_line(code, err, "disk full while saving the checkpoint of step")
    assert error_lines(err)[0].startswith("error: disk full")
    assert len(err.strip().splitlines()) <= 2, err[-3000:]
    assert "the last good checkpoint is step 10" in err
    subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
    code, out, err = _train(work, "--config.train.steps=60")
    assert code == 0, err[-3000:]
    assert "resuming from the checkpoint of step 10" in out
  finally:
    subprocess.run(["umount", str(mnt)], check=False)


def test_truncated_files_are_one_line(tmp_path):
  """7. A truncated IDX file; truncated or bad-header safetensors."""

  idx = tmp_path / "images.idx"
  header = bytes([0, 0, 8, 3]) + (100).to_bytes(4, "big") * 1
  header += (8).to_bytes(4, "big") * 2
  idx.write_bytes(header + bytes(100 * 64 - 7))
  code, _, err = run_module(
    "boot_jax.train_teacher",
    "--config",
    os.path.join(ROOT, "configs", "digits_teacher.py"),
    "--config.data.source=idx",
    f"--config.data.path={idx}",
    "--workdir",
    tmp_path / "t",
  )
  _one_line(code, err, "is truncated or padded")
  with pytest.raises(datasets.DataError, match="truncated inside its header"):
    datasets._read_idx(_write(tmp_path / "h.idx", header[:9]))
  for name, raw in (
    ("cut.safetensors", b"\x40\x00\x00\x00\x00\x00\x00\x00{"),
    ("bad.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00nope!"),
    ("tiny.safetensors", b"\x01"),
  ):
    with pytest.raises(loading.SDError, match="not a safetensors file"):
      loading.read_safetensors(_write(tmp_path / name, raw))


def _write(path, raw: bytes) -> str:
  path.write_bytes(raw)
  return str(path)


def test_prompt_files_hold_strings(tmp_path):
  """8, 9. JSONL prompts must be strings; a 100 MB line is cut to words
  before the tokenizer sees it."""

  for value in ("null", "5", '["a"]'):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a cat"}\n{"prompt": ' + value + "}\n")
    with pytest.raises(prompts.PromptError, match="not a string"):
      prompts.read_prompts(str(path))
  huge = "word " * 20_000_000  # 100 MB
  clipped = sd_teacher.clip_words(huge, 77)
  assert len(clipped.split()) == 78
  long_word = "x" * 5000 + " tail"
  assert (
    sd_teacher.clip_words(long_word, 77)
    == "x" * sd_teacher.MAX_WORD_CHARS + " tail"
  )


def test_the_finished_run_still_samples_bit_for_bit(finished, tmp_path):
  """Whichever cases ran before: the finished run's checkpoint samples bit
  for bit as it did when it was made (its files are checked after every
  case by `finished_run_unchanged`)."""
  _still_samples(finished, tmp_path)


def test_a_checkpoints_folder_that_is_a_link(tmp_path):
  """9. checkpoints/ as a link to another disk is legitimate: the run
  saves through it and samples from it. A link to a folder that does not
  exist is refused in one line, and nothing is created."""
  disk = tmp_path / "disk2"
  disk.mkdir()
  work = tmp_path / "w"
  work.mkdir()
  (work / "checkpoints").symlink_to(disk)
  code, _, err = _train(work, "--config.train.steps=10")
  assert code == 0, err[-3000:]
  assert sorted(p.name for p in disk.iterdir()) == ["10"]
  code, _, err = _sample(work, tmp_path / "s.npz")
  assert code == 0, err[-3000:]
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "checkpoints").symlink_to(tmp_path / "missing")
  code, _, err = _train(bad, "--config.train.steps=10")
  _one_line(code, err, "is not a work directory")
  assert os.listdir(bad) == ["checkpoints"]
  assert not (tmp_path / "missing").exists()
