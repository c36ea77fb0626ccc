"""Nothing a user owns is deleted or overwritten: boot_jax.guards and every
writer that uses it (export, sample, train, train_teacher, fid_stats).

Each case builds a temporary tree, lists every file with its bytes before
the command and after it, and asserts the two listings are equal. `/` and
`$HOME` are simulated through the guard's own `Places` (and, for the
export program, through a temporary `$HOME`), never touched for real.
"""

import json
import os
import pathlib
import zipfile

import numpy as np
import pytest
from conftest import error_lines, run_module, train_mixture

from boot_jax import fid_stats as fid_stats_program
from boot_jax.runtime import guards, paths

ROOT = pathlib.Path(__file__).resolve().parents[2]
GMM = str(ROOT / "configs" / "gmm.py")


def listing(root) -> dict:
  """Every file and folder under `root`: relative path -> bytes (or DIR)."""
  root = pathlib.Path(root)
  out = {}
  for p in sorted(root.rglob("*")):
    rel = str(p.relative_to(root))
    out[rel] = "DIR" if p.is_dir() and not p.is_symlink() else p.read_bytes()
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step mixture run."""
  work = tmp_path_factory.mktemp("guards") / "w"
  train_mixture(work)
  return work


def _places(tmp_path, **kw):
  base = dict(
    roots=(str(tmp_path / "root"),),
    homes=(str(tmp_path / "home"),),
    cwd=str(tmp_path / "cwd"),
  )
  base.update(kw)
  return guards.Places(**base)


def _user_tree(root):
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  (root / "thesis.tex").write_text("my thesis\n")
  (root / "data").mkdir(exist_ok=True)
  (root / "data" / "results.csv").write_text("a,b\n1,2\n")
  return root


@pytest.mark.parametrize("place", ["root", "home", "cwd"])
def test_simulated_root_home_and_cwd_are_never_replaced(tmp_path, place):
  target = _user_tree(tmp_path / place)
  # Even with an export's marker inside, these places are protected.
  (target / "signature.json").write_text(
    json.dumps(dict(checkpoint_step=1, inputs=[], output={}))
  )
  before = listing(tmp_path)
  with pytest.raises(guards.RefusedError, match="will not replace") as e:
    guards.check_replace_dir(
      str(target), guards.EXPORT, places=_places(tmp_path)
    )
  assert "--overwrite" not in str(e.value)
  assert listing(tmp_path) == before


def test_folders_holding_protected_places_are_never_replaced(tmp_path):
  _user_tree(tmp_path / "top" / "home")
  places = _places(tmp_path, homes=(str(tmp_path / "top" / "home"),))
  with pytest.raises(guards.RefusedError, match="holding the home"):
    guards.check_replace_dir(
      str(tmp_path / "top"), guards.EXPORT, places=places
    )


def test_the_real_root_and_home_are_refused_by_the_check_alone():
  # check_replace_dir only reads: refusing here is all that happens.
  for path in (os.sep, os.path.expanduser("~")):
    with pytest.raises(guards.RefusedError, match="will not replace"):
      guards.check_replace_dir(path, guards.EXPORT)
    with pytest.raises(guards.RefusedError):
      guards.check_workdir(path)


def _export(work, out, *extra, cwd=None, env=None):
  return run_module(
    "boot_jax.export",
    "--workdir",
    work,
    "--out",
    out,
    "--overwrite",
    "--platforms",
    "cpu",
    *extra,
    cwd=cwd,
    env=env,
  )


def _case(run, tmp_path, case):
  """(out, cwd, env, tree root to list) for one hostile --out."""
  if case == "cwd":
    cwd = _user_tree(tmp_path / "cwd")
    return ".", cwd, None, tmp_path
  if case == "home":
    home = _user_tree(tmp_path / "home")
    return home, None, {"HOME": str(home)}, tmp_path
  if case == "workdir":
    return run, None, None, run.parent
  if case == "parent":
    return run.parent, None, None, run.parent
  if case == "checkpoints":
    return run / "checkpoints", None, None, run.parent
  if case == "user_folder":
    return _user_tree(tmp_path / "mine"), None, None, tmp_path
  if case == "inside_workdir":
    # An export's marker inside the work directory does not make it ours
    # to replace there.
    out = run / "old_export"
    out.mkdir(exist_ok=True)
    (out / "signature.json").write_text(
      json.dumps(dict(checkpoint_step=1, inputs=[], output={}))
    )
    return out, None, None, run.parent
  raise AssertionError(case)


@pytest.mark.parametrize(
  "case",
  [
    "cwd",
    "home",
    "workdir",
    "parent",
    "checkpoints",
    "user_folder",
    "inside_workdir",
  ],
)
def test_export_overwrite_refuses_what_it_did_not_write(run, tmp_path, case):
  out, cwd, env, root = _case(run, tmp_path, case)
  before = listing(root)
  code, _, err = _export(run, out, cwd=cwd, env=env)
  lines = error_lines(err)
  assert code != 0, err[-2000:]
  assert len(lines) == 1 and "will not replace" in lines[0], err[-2000:]
  assert "--overwrite" not in lines[0]
  assert listing(root) == before


def test_export_replaces_only_an_earlier_export(run, tmp_path):
  out = tmp_path / "export"
  code, _, err = run_module(
    "boot_jax.export", "--workdir", run, "--out", out, "--platforms", "cpu"
  )
  assert code == 0, err[-2000:]
  sig = json.loads((out / "signature.json").read_text())
  assert sig["files"][-1] == "signature.json"
  assert sorted(sig["files"]) == sorted(os.listdir(out))
  old_params = (out / "params.npz").read_bytes()
  # Without --overwrite an earlier export is kept (and the line says so).
  code, _, err = run_module(
    "boot_jax.export", "--workdir", run, "--out", out, "--platforms", "cpu"
  )
  assert code != 0 and "--overwrite" in error_lines(err)[0]
  # With it, the export is replaced whole, leaving no temporary folder.
  (out / "README.md").write_text("stale")
  code, _, err = _export(run, out)
  assert code == 0, err[-2000:]
  assert (out / "README.md").read_text() != "stale"
  assert (out / "params.npz").read_bytes() == old_params
  assert sorted(os.listdir(tmp_path)) == ["export"]
  # A user file put into the export folder makes it not ours to replace.
  (out / "notes.txt").write_text("mine")
  before = listing(tmp_path)
  code, _, err = _export(run, out)
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1 and "notes.txt" in lines[0], err
  assert listing(tmp_path) == before


def test_replace_dir_swaps_without_a_gap(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "signature.json").write_text("old")
  new = tmp_path / "new"
  new.mkdir()
  (new / "signature.json").write_text("new")
  guards.replace_dir(str(new), str(out), existed=True)
  assert (out / "signature.json").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("module", ["boot_jax.train", "boot_jax.train_teacher"])
def test_training_refuses_a_folder_it_did_not_write(tmp_path, module):
  folder = _user_tree(tmp_path / "results")
  (folder / "metrics.jsonl").write_text('{"step": 1, "acc": 0.5}\n')
  config = (
    GMM if module == "boot_jax.train" else ROOT / "configs/digits_teacher.py"
  )
  before = listing(tmp_path)
  code, _, err = run_module(
    module, "--config", config, "--workdir", folder, "--config.train.steps=1"
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1, err[-2000:]
  assert "not a work directory" in lines[0] and "metrics.jsonl" in lines[0]
  assert listing(tmp_path) == before


def test_check_workdir_accepts_what_a_run_writes_first(tmp_path):
  w = tmp_path / "w"
  w.mkdir()
  guards.check_workdir(str(w))  # empty
  (w / ".lock").write_text(json.dumps(dict(host="h", pid=1, since=0)))
  (w / "checkpoints").mkdir()
  teacher = w / "teacher"
  teacher.mkdir()
  (teacher / "config.json").write_text(json.dumps(dict(train={"steps": 1})))
  guards.check_workdir(str(w))  # a run killed while training its teacher
  (w / "metrics.jsonl").write_text("{}\n")
  with pytest.raises(guards.RefusedError, match="metrics.jsonl"):
    guards.check_workdir(str(w))
  (w / "metrics.jsonl").unlink()
  (w / ".lock").write_text("not a lock of ours")
  with pytest.raises(guards.RefusedError, match=r"\.lock"):
    guards.check_workdir(str(w))


def test_a_folder_gone_between_the_checks_counts_as_missing(
  tmp_path, monkeypatch
):
  """Another process's write probe can be the only object under a bucket
  "folder": seen by isdir, deleted before the listing. That folder is
  missing (accepted), not an error."""
  w = tmp_path / "w"
  w.mkdir()

  def vanished(path):
    raise FileNotFoundError(path)

  monkeypatch.setattr(guards.paths, "listdir", vanished)
  guards.check_workdir(str(w))


def test_sample_replaces_only_its_own_files(run, tmp_path):
  user = tmp_path / "mine.npz"
  np.savez(user, weights=np.arange(3))
  before = listing(tmp_path)
  code, _, err = run_module(
    "boot_jax.sample", "--workdir", run, "--out", user, "--num", "8"
  )
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1 and "not a sample file" in lines[0]
  assert listing(tmp_path) == before
  # Its own earlier output is replaced.
  out = tmp_path / "s.npz"
  for _ in range(2):
    code, _, err = run_module(
      "boot_jax.sample", "--workdir", run, "--out", out, "--num", "8"
    )
    assert code == 0, err[-2000:]
  with zipfile.ZipFile(out) as z:
    assert sorted(z.namelist()) == ["images.npy", "noise.npy"]


def test_sample_grid_beside_the_file_is_checked(tmp_path):
  from PIL import Image

  from boot_jax.runtime import workdir as workdir_lib

  out, png = tmp_path / "s.npz", tmp_path / "s.png"
  Image.new("L", (4, 4)).save(png)  # a user's picture
  before = listing(tmp_path)
  with pytest.raises(guards.RefusedError, match="not a sample grid"):
    guards.check_sample_outputs(str(out), str(png))
  assert listing(tmp_path) == before
  # Our grids carry their marker; an earlier sample file vouches for a
  # grid written before the marker existed.
  workdir_lib.save_image_grid(np.zeros((4, 8, 8, 1)), str(png))
  guards.check_sample_outputs(str(out), str(png))
  Image.new("L", (4, 4)).save(png)
  np.savez(out, images=np.zeros(1), noise=np.zeros(1))
  guards.check_sample_outputs(str(out), str(png))


def test_fid_stats_refuses_to_replace_other_files(tmp_path):

  user = tmp_path / "ref.npz"
  np.savez(user, weights=np.arange(3))
  before = listing(tmp_path)
  code = fid_stats_program.main(
    ["--digits", "--inception", str(tmp_path / "none"), "--out", str(user)]
  )
  assert code == 1
  assert listing(tmp_path) == before


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):

  old = os.umask(umask)
  try:
    paths.write_atomic(str(tmp_path / "config.json"), "{}")
  finally:
    os.umask(old)
  mode = (tmp_path / "config.json").stat().st_mode & 0o777
  assert mode == 0o666 & ~umask
