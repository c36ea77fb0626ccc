"""The pixel pipeline on a tiny digits teacher: train_teacher, train (data
free), sample and evaluate, and their one-line errors.

The teacher and student here are deliberately tiny and barely trained: these
tests check plumbing and contracts, not quality (benchmarks/demo.py does).
"""

import importlib.util
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from conftest import (
  error_lines,
  random_weights_file,
  run_export,
  run_module,
  run_sample,
  tb_tags,
  tree_hash,
)

from boot_jax import fid_stats as fid_stats_program
from boot_jax.config import recipes
from boot_jax.data import datasets
from boot_jax.evaluation import digits_classifier, reference_stats
from boot_jax.runtime import checkpoint
from boot_jax.training import boot_run, trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "configs" / "digits.py"
TEACHER_CFG = ROOT / "configs" / "digits_teacher.py"
TINY_TEACHER = [
  "--config.model.channels=16",
  "--config.model.num_res_blocks=1",
  "--config.model.num_heads=1",
  "--config.train.steps=20",
  "--config.train.batch_size=32",
  "--config.train.log_every=10",
  "--config.train.ckpt_every=10",
  "--config.train.eval_every=20",
  "--config.eval.grid_size=16",
  "--config.eval.ddim_steps=5",
]


def _boot_args(teacher_dir, steps=10):
  return [
    "--config",
    f"{DIGITS}:boot",
    f"--config.teacher.path={teacher_dir}",
    f"--config.train.steps={steps}",
    "--config.train.batch_size=16",
    "--config.train.log_every=5",
    "--config.train.ckpt_every=5",
    "--config.train.eval_every=10",
    "--config.eval.grid_size=16",
    "--config.eval.final=false",
    "--config.mesh.data=1",
  ]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("teacher")
  code, out, err = run_module(
    "boot_jax.train_teacher",
    "--config",
    TEACHER_CFG,
    "--workdir",
    path,
    *TINY_TEACHER,
  )
  assert code == 0, err[-3000:]
  assert "teacher data: digits, 1797 images" in out
  assert (path / "samples" / "teacher_0000020.png").exists()
  # The sample grid also goes to TensorBoard, as an image.
  assert ("samples/teacher", 20) in _tb_images(path)
  return path


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, teacher_dir):
  """The digits run most tests read. Its evaluation also measures
  Inception FID/KID/precision/recall on 16 samples (random Inception
  weights; a reference of 40 digits) and draws the teacher's grid once."""

  path = tmp_path_factory.mktemp("student")
  extra = tmp_path_factory.mktemp("inception")
  weights = extra / "inception.safetensors"
  random_weights_file(weights)
  extractor = reference_stats.Extractor(str(weights))
  real = datasets.load_digits().images[:40]
  stats = reference_stats.make(
    extractor.features(real), extractor.identity, "d"
  )
  reference_stats.save(stats, str(extra / "ref.npz"))
  code, out, err = run_module(
    "boot_jax.train",
    *_boot_args(teacher_dir),
    f"--config.eval.inception={weights}",
    f"--config.eval.reference={extra / 'ref.npz'}",
    "--config.eval.inception_samples=16",
    "--workdir",
    path,
  )
  assert code == 0, err[-3000:]
  assert (path / "samples" / "student_0000010.png").exists()
  assert (path / "samples" / "teacher.png").exists()
  tb = _tb_images(path)
  assert ("samples/student", 10) in tb and ("samples/teacher", 10) in tb
  rows = (path / "metrics.jsonl").read_text().splitlines()
  rows = [json.loads(r) for r in rows]
  (row,) = [r for r in rows if "eval/fid_inception" in r]
  assert row["step"] == 10 and row["eval/fid_inception"] > 0
  assert 0 <= row["eval/precision"] <= 1 and 0 <= row["eval/recall"] <= 1
  assert "evaluation at step 10: eval/fid_inception" in out
  return path


def _tb_images(workdir):

  out = set()
  for events in (workdir / "tb").glob("events.out.tfevents*"):
    for tag, rows in tb_tags(events.read_bytes()).items():
      out |= {(tag, step) for step, kind in rows if kind == "image"}
  return out


def test_distillation_never_reads_data(teacher_dir, tmp_path, no_datasets):
  """Every dataset loader raises; distillation still runs to the end."""
  from boot_jax.runtime import workdir as workdir_lib

  # 6 BOOT steps, then 2 of the refinement phase (the teacher's UNet as
  # the fake network): neither reads data.
  args = [*_boot_args(teacher_dir, steps=6), "--config.boot.refine=true"]
  config = _config_from_args([*args, "--config.refine.steps=2"])
  lines = []
  boot_run.train_and_evaluate(config, str(tmp_path / "w"), printer=lines.append)
  assert not no_datasets
  assert any("then 2 refinement steps" in line for line in lines)
  assert workdir_lib.load_config(str(tmp_path / "w")).teacher.path
  assert (tmp_path / "w" / "checkpoints" / "8").is_dir()
  assert (tmp_path / "w" / "samples" / "student_0000008.png").exists()
  rows = (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
  last = json.loads(rows[-1])
  assert last["step"] == 8 and np.isfinite(last["loss_fake"])


def _config_from_args(args):
  """The digits config with the `--config.a.b=v` overrides applied."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("digits", DIGITS)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("boot")
  for arg in args:
    if not str(arg).startswith("--config."):
      continue
    key, value = str(arg)[len("--config.") :].split("=", 1)
    *parents, last = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[last]
    if isinstance(old, bool):
      value = value.lower() == "true"
    elif isinstance(old, int):
      value = int(value)
    node[last] = value
  return config


def test_sample_cli_same_eps_for_every_sampler(student_dir, tmp_path):
  outs = {}
  for sampler, steps in (("student", 1), ("teacher", 4), ("hybrid", 2)):
    out = tmp_path / f"{sampler}.npz"
    code, stdout, err = run_sample(
      student_dir,
      out,
      "--num",
      12,
      "--seed",
      7,
      "--sampler",
      sampler,
      "--steps",
      steps,
      "--batch_size",
      8,
    )
    assert code == 0, err[-3000:]
    assert "images/s (after compilation)" in stdout
    with np.load(out) as f:
      outs[sampler] = (f["images"], f["noise"])
    assert out.with_suffix(".png").exists()
  for images, _ in outs.values():
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.float32
    assert np.all(np.isfinite(images))
  np.testing.assert_array_equal(outs["student"][1], outs["teacher"][1])
  np.testing.assert_array_equal(outs["student"][1], outs["hybrid"][1])
  # --noise replays a given eps: the same images as that seed's.
  noise_file = tmp_path / "eps.npy"
  np.save(noise_file, outs["student"][1])
  code, _, err = run_sample(
    student_dir, tmp_path / "replay.npz", "--noise", noise_file
  )
  assert code == 0, err[-3000:]
  with np.load(tmp_path / "replay.npz") as f:
    np.testing.assert_allclose(f["images"], outs["student"][0], atol=1e-6)


def test_evaluate_cli_writes_eval_json(student_dir, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(student_dir, work)
  # Small and quick: the contract, not the numbers.
  cfg = json.loads((work / "config.json").read_text())
  cfg["eval"].update(
    num_samples=16,
    batch_size=16,
    ddim_steps=[1, 2, 10],
    agreement_steps=[10],
    hybrid_steps=[1],
  )
  (work / "config.json").write_text(json.dumps(cfg))
  # With the run's Inception weights (random) and reference: every
  # sampler also gets Inception FID, KID and precision/recall (the column
  # docs/BENCHMARKS.md reports with the release weights).
  code, out, err = run_module(
    "boot_jax.evaluate", "--workdir", work,
    "--inception", cfg["eval"]["inception"],
    "--reference", cfg["eval"]["reference"],
  )  # fmt: skip
  assert code == 0, err[-3000:]
  report = json.loads((work / "eval.json").read_text())
  assert report["checkpoint_step"] == 10
  assert 0.9 < report["classifier_accuracy"] <= 1.0
  names = set(report["samplers"])
  assert {"student 1 step", "teacher DDIM 1", "teacher DDIM 10"} <= names
  for entry in report["samplers"].values():
    assert entry["fid"] >= 0 and entry["images_per_s"] > 0
    assert entry["fid_inception"] > 0 and np.isfinite(entry["kid"])
    assert 0 <= entry["precision"] <= 1 and 0 <= entry["recall"] <= 1
  assert set(report["agreement"]) == {"10"}
  assert "FID" in out and "Inc. FID" in out
  # benchmarks/demo.py's table: the Inception column holds these numbers,
  # or says it needs the weights when the report has none.
  spec = importlib.util.spec_from_file_location(
    "demo_benchmark", ROOT / "benchmarks" / "demo.py"
  )
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  row = report["samplers"]["teacher DDIM 10"]
  table = demo.markdown(report, 60.0, "cmd", [])
  assert f"| teacher DDIM 10 | {row['fid']:.2f} | " in table
  assert f" | {row['fid_inception']:.2f} | " in table
  assert "needs weights" not in table
  for entry in report["samplers"].values():
    del entry["fid_inception"]
  table = demo.markdown(report, 60.0, "cmd", [])
  assert "| needs weights |" in table and "--inception" in table


def test_teacher_shape_mismatch_is_one_line(teacher_dir, tmp_path):
  """A teacher whose config and checkpoint disagree is refused cleanly."""
  bad = tmp_path / "bad_teacher"
  shutil.copytree(teacher_dir, bad)
  cfg = json.loads((bad / "config.json").read_text())
  cfg["model"]["channels"] = 32  # the checkpoint holds 16
  (bad / "config.json").write_text(json.dumps(cfg))
  before = tree_hash(bad)
  work = tmp_path / "w"
  code, _, err = run_module(
    "boot_jax.train", *_boot_args(bad), "--workdir", work
  )
  assert code != 0
  lines = error_lines(err)
  assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
  assert "does not fit the config" in lines[0]
  assert "Conv_0/bias has shape (16,) in the checkpoint" in lines[0]
  assert tree_hash(bad) == before
  assert not (work / "config.json").exists()


def test_missing_teacher_directory_is_one_line(tmp_path):
  code, _, err = run_module(
    "boot_jax.train",
    *_boot_args(tmp_path / "nowhere"),
    "--config.teacher.recipe=",
    "--workdir",
    tmp_path / "w",
  )
  assert code != 0
  lines = error_lines(err)
  assert len(lines) == 1, err[-2000:]
  assert "does not exist" in lines[0]


def test_train_teacher_bad_image_folders(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "a.png").write_bytes(b"not a png")
  for folder, expected in (
    (empty, "holds no PNG or JPEG"),
    (broken, "cannot read image"),
  ):
    code, _, err = run_module(
      "boot_jax.train_teacher",
      "--config",
      TEACHER_CFG,
      "--config.data.source=folder",
      f"--config.data.path={folder}",
      "--workdir",
      tmp_path / "t",
    )
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err[-2000:]
  assert not (tmp_path / "t" / "config.json").exists()


def test_image_folder_and_idx_loaders(tmp_path):
  from PIL import Image

  for cls in ("cat", "dog"):
    (tmp_path / "imgs" / cls).mkdir(parents=True)
    for i in range(3):
      arr = np.full((5, 7, 3), 40 * i, np.uint8)
      Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
  ds = datasets.load_image_folder(str(tmp_path / "imgs"), 4, channels=3)
  assert ds.images.shape == (6, 4, 4, 3) and ds.num_classes == 2
  assert ds.images.min() >= -1 and ds.images.max() <= 1
  assert sorted(set(ds.labels.tolist())) == [0, 1]
  # IDX (MNIST format), gzip, with labels.
  import gzip
  import struct

  imgs = np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6)
  with gzip.open(tmp_path / "x.idx.gz", "wb") as f:
    f.write(
      bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 6, 6) + imgs.tobytes()
    )
  with open(tmp_path / "y.idx", "wb") as f:
    f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + bytes([3, 1]))
  ds = datasets.load_idx(str(tmp_path / "x.idx.gz"), str(tmp_path / "y.idx"), 6)
  np.testing.assert_allclose(ds.images[..., 0], imgs / 127.5 - 1.0, atol=1e-6)
  assert ds.labels.tolist() == [3, 1] and ds.num_classes == 4
  with open(tmp_path / "short.idx", "wb") as f:
    f.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 6, 6) + b"\0" * 10)
  with pytest.raises(datasets.DataError, match="truncated"):
    datasets.load_idx(str(tmp_path / "short.idx"), None, 6)


def test_digits_loader():
  ds = datasets.load_digits(8)
  assert ds.images.shape == (1797, 8, 8, 1)
  assert ds.images.min() == -1.0 and ds.images.max() == 1.0
  assert ds.num_classes == 10
  up = datasets.load_digits(16)
  assert up.images.shape == (1797, 16, 16, 1)


def test_workdir_errors_leave_checkpoints_untouched(student_dir, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(student_dir, work)
  teacher = json.loads((work / "config.json").read_text())["teacher"]["path"]
  args = _boot_args(teacher)

  def refused(extra, *expected):
    """`train extra` on the work directory: one error line holding every
    `expected`, and the directory left byte for byte as it was."""
    before = tree_hash(work)
    code, _, err = run_module("boot_jax.train", *args, extra, "--workdir", work)
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1, err[-2000:]
    assert all(e in lines[0] for e in expected), lines[0]
    assert tree_hash(work) == before

  # A different config.
  refused(
    "--config.boot.num_steps=8",
    "made by a different config",
    "boot.num_steps: 16 -> 8",
  )
  # A truncated checkpoint file.
  latest = work / "checkpoints" / "10" / "state"
  victim = max(
    (p for p in latest.rglob("*") if p.is_file()),
    key=lambda p: p.stat().st_size,
  )
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  refused("--config.train.steps=15", "cannot be restored")
  # Bad values and unknown keys never touch the directory either.
  refused("--config.train.steps=-1", "train.steps must be >= 0")
  refused("--config.boot.nope=1", "unknown config key 'nope'")
  refused("--config.train.batch_size=0", "batch_size must be positive")


def test_allow_config_change(student_dir, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(student_dir, work)
  teacher = json.loads((work / "config.json").read_text())["teacher"]["path"]
  code, out, err = run_module(
    "boot_jax.train",
    *_boot_args(teacher, steps=12),
    "--config.optim.lr=1e-4",
    "--config.train.allow_config_change=true",
    "--workdir",
    work,
  )
  assert code == 0, err[-2000:]
  assert "resuming from the checkpoint of step 10" in out
  assert json.loads((work / "config.json").read_text())["optim"]["lr"] == 1e-4
  assert (work / "checkpoints" / "12").is_dir()


def test_unwritable_workdir(teacher_dir, tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  code, _, err = run_module(
    "boot_jax.train", *_boot_args(teacher_dir), "--workdir", a_file / "w"
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1, err[-2000:]
  assert "is a file" in lines[0]
  if os.geteuid() != 0:  # root ignores permission bits
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, _, err = run_module(
      "boot_jax.train", *_boot_args(teacher_dir), "--workdir", ro / "w"
    )
    assert code != 0 and "not writable" in error_lines(err)[0]


def test_train_trains_the_missing_teacher_first(tmp_path, monkeypatch):
  """The single command: no teacher yet -> one line, teacher, then BOOT."""

  def tiny_recipe():
    c = recipes.digits_teacher_config()
    c.model.num_res_blocks = 1
    c.model.num_heads = 1
    c.train.steps = 8
    c.train.batch_size = 16
    c.train.log_every = 4
    c.train.ckpt_every = 8
    c.train.eval_every = 8
    c.eval.grid_size = 4
    c.eval.ddim_steps = 2
    return c

  monkeypatch.setitem(recipes.TEACHER_RECIPES, "tiny", tiny_recipe)
  config = _config_from_args(_boot_args("teacher", steps=4))
  config.teacher.recipe = "tiny"
  lines = []
  boot_run.train_and_evaluate(config, str(tmp_path / "w"), printer=lines.append)
  said = [line for line in lines if line.startswith("no trained teacher")]
  assert len(said) == 1 and "'tiny' teacher recipe" in said[0]
  teacher = tmp_path / "w" / "teacher"
  assert (teacher / "checkpoints" / "8").is_dir()
  assert (tmp_path / "w" / "checkpoints" / "4").is_dir()
  assert list((tmp_path / "w" / "tb").glob("events.out.tfevents*"))
  # A second run finds the teacher and the finished student: nothing to do.
  lines.clear()
  boot_run.train_and_evaluate(config, str(tmp_path / "w"), printer=lines.append)
  assert not any(line.startswith("no trained teacher") for line in lines)
  assert any("resuming from the checkpoint of step 4" in line for line in lines)


def test_teacher_workdir_samples_and_evaluates(teacher_dir, tmp_path):
  """A teacher work directory samples with its DDIM; student samplers are
  refused in one line."""
  code, out, err = run_sample(
    teacher_dir, tmp_path / "t.npz", "--num", "16", "--steps", "4"
  )
  assert code == 0, err[-3000:]
  images = np.load(tmp_path / "t.npz")["images"]
  assert images.shape[0] == 16 and images.ndim == 4
  assert -1.0 <= images.min() and images.max() <= 1.0
  code, _, err = run_sample(
    teacher_dir, tmp_path / "s.npz", "--sampler", "student"
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1 and "no student" in lines[0], err
  work = tmp_path / "t"
  shutil.copytree(teacher_dir, work)
  code, out, err = run_module(
    "boot_jax.evaluate", "--workdir", work, "--num_samples", "64"
  )
  assert code == 0, err[-3000:]
  report = json.loads((work / "eval.json").read_text())
  assert "teacher DDIM 50" in report["samplers"]
  assert "student 1 step" not in report["samplers"]


def test_export_digits_student(student_dir, tmp_path):
  """The exported artifact equals `sample` on the same eps (<= 1e-6)."""

  out = tmp_path / "export"
  code, _, err = run_module(
    "boot_jax.export", "--workdir", student_dir, "--out", out
  )
  assert code == 0, err[-3000:]
  code, _, err = run_sample(student_dir, tmp_path / "s.npz", "--num", "24")
  assert code == 0, err[-3000:]
  s = np.load(tmp_path / "s.npz")
  np.save(tmp_path / "eps.npy", s["noise"])
  got = run_export(out, [tmp_path / "eps.npy"], tmp_path / "got.npy")
  err = float(np.abs(got - s["images"]).max())
  print(f"digits export vs sample: max abs {err:.2e}")
  assert err <= 1e-6, err


def test_fid_stats_then_evaluate_pixel_protocol(student_dir, tmp_path, capsys):
  """`fid_stats` on an image folder, then `evaluate --protocol pixel` on
  the trained digits run (random Inception weights: the weights of the
  release cannot be downloaded here). Its FID equals the Frechet distance
  of what `sample` writes for the same seed (1e-6 relative); a reference
  made with other preprocessing, an empty folder and a .pth are refused
  in one line."""
  from PIL import Image

  weights = tmp_path / "inception.safetensors"
  random_weights_file(weights)
  folder = tmp_path / "real"
  folder.mkdir()
  digits = datasets.load_digits().images[:40]
  for i, img in enumerate(digits):
    u8 = np.round((img[..., 0] + 1) * 127.5).astype(np.uint8)
    Image.fromarray(u8).save(folder / f"{i:03d}.png")
  ref = tmp_path / "ref.npz"
  code, out, err = run_module(
    "boot_jax.fid_stats", "--images", folder, "--size", 8,
    "--inception", weights, "--out", ref,
  )  # fmt: skip
  assert code == 0, err[-3000:]
  with np.load(ref) as f:
    assert int(f["count"]) == 40 and f["features"].shape == (40, 2048)
    assert str(f["preprocessing"]) == reference_stats.PREPROCESSING
    ref_mu, ref_sigma = f["mu"], f["sigma"]
  code, out, err = run_module(
    "boot_jax.evaluate", "--workdir", student_dir, "--protocol", "pixel",
    "--reference", ref, "--inception", weights, "--num_samples", 24,
  )  # fmt: skip
  assert code == 0, err[-3000:]
  report = json.loads((student_dir / "eval_pixel.json").read_text())
  assert report["num_samples"] == 24 and report["reference_count"] == 40
  assert 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
  assert np.isfinite(report["kid"])
  code, _, err = run_sample(
    student_dir, tmp_path / "s.npz",
    "--num", 24, "--seed", 0
  )  # fmt: skip
  assert code == 0, err[-3000:]
  images = np.load(tmp_path / "s.npz")["images"]
  feats = reference_stats.Extractor(str(weights)).features(images)
  want = digits_classifier.frechet_distance(
    *digits_classifier.gaussian(feats), ref_mu, ref_sigma
  )
  assert want > 0
  assert abs(report["fid_inception"] - want) <= 1e-6 * want, (report, want)

  other = tmp_path / "other.npz"
  with np.load(ref) as f:
    stats = {k: f[k] for k in f.files}
  stats["preprocessing"] = np.asarray("resized with PIL bicubic")
  np.savez(other, **stats)
  (tmp_path / "empty").mkdir()
  code, _, err = run_module(
    "boot_jax.evaluate", "--workdir", student_dir, "--protocol", "pixel",
    "--reference", other, "--inception", weights,
  )  # fmt: skip
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1, err[-2000:]
  assert "another preprocessing" in lines[0]
  # fid_stats' own errors (its main, in process: the same lines).
  for args, expected in (
    (["--images", str(tmp_path / "empty"), "--size", "8"], "holds no PNG"),
    (["--digits"], "convert it once"),
  ):
    w = str(weights if "--images" in args else tmp_path / "w.pth")
    assert (
      fid_stats_program.main([*args, "--inception", w, "--out", str(other)])
      == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1


def test_refine_a_finished_boot_run(student_dir, teacher_dir, tmp_path):
  """refine.init_from: a new work directory starts its student from a BOOT
  run's latest checkpoint (exactly; 0 steps saves that state), then
  refines it when resumed with more steps; bad sources are one line."""
  import jax

  work = tmp_path / "refined"
  args = [
    *_boot_args(teacher_dir, steps=0),
    "--config.boot.refine=true",
    f"--config.refine.init_from={student_dir}",
    "--workdir",
    work,
  ]
  steps0 = "--config.refine.steps=0"
  code, out, err = run_module("boot_jax.train", *args, steps0)
  assert code == 0, err[-3000:]
  assert f"the student started from {student_dir} (checkpoint step 10)" in out
  config = _config_from_args(args)
  config.refine.init_from = str(student_dir)
  model = trainer.setup(config).model
  source, _ = checkpoint.read_params(
    str(student_dir / "checkpoints"), model.abstract_params
  )
  start, step = checkpoint.read_params(
    str(work / "checkpoints"), model.abstract_params
  )
  assert step == 0
  pairs = zip(jax.tree.leaves(source), jax.tree.leaves(start), strict=True)
  for a, b in pairs:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  steps2 = "--config.refine.steps=2"
  code, out, err = run_module("boot_jax.train", *args, steps2)
  assert code == 0, err[-3000:]
  assert "resuming from the checkpoint of step 0" in out
  assert (work / "checkpoints" / "2").is_dir()
  for extra, expected in (
    ([f"--config.refine.init_from={tmp_path}"], "holds no checkpoints/"),
    (
      [
        "--config.boot.refine=false",
        f"--config.refine.init_from={student_dir}",
      ],
      "needs boot.refine=true",
    ),
  ):
    code, _, err = run_module(
      "boot_jax.train", *_boot_args(teacher_dir, steps=0), "--workdir",
      tmp_path / "bad", "--config.boot.refine=true", *extra,
    )  # fmt: skip
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1 and expected in lines[0], err[-2000:]
