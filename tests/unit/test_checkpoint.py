"""Reading parameters while a training's retention removes checkpoints.

A training keeps its latest checkpoints and deletes older ones; `sample`,
`evaluate` and `export` read the latest parameters meanwhile. The race is
made deterministic here: the first metadata read of a step finds that a
newer checkpoint was just saved and the step being read deleted.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boot_jax.runtime import checkpoint


def _state(step: int):
  return {
    "params": {"w": jnp.full((3,), float(step))},
    "step": jnp.asarray(step, jnp.int32),
  }


def _save(directory, *steps):
  ckpt = checkpoint.Checkpointer(str(directory), async_save=False)
  for step in steps:
    ckpt.save(step, {"state": _state(step)})
  ckpt.close()


def _target():
  return {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}


def _rotate_on_first_read(monkeypatch, directory, times=1):
  """Each of the first `times` metadata reads: save the next step and
  delete the one being read (what retention does)."""
  real = checkpoint._saved_tree
  calls = []

  def rotating(item_dir):
    if len(calls) < times:
      step = int(item_dir.rstrip("/").split("/")[-2])
      calls.append(step)
      _save(directory, step + 1)
      shutil.rmtree(directory / str(step))
    return real(item_dir)

  monkeypatch.setattr(checkpoint, "_saved_tree", rotating)
  return calls


def test_the_latest_is_read_when_retention_removes_the_one_being_read(
  tmp_path, monkeypatch
):
  directory = tmp_path / "checkpoints"
  _save(directory, 1, 2)
  calls = _rotate_on_first_read(monkeypatch, directory)
  params, step = checkpoint.read_params(str(directory), _target())
  assert calls == [2]  # step 2 was removed under the reader ...
  assert step == 3  # ... which moved on to the newest checkpoint
  np.testing.assert_array_equal(params["w"], np.full((3,), 3.0))


def test_a_removed_step_asked_for_is_one_line(tmp_path, monkeypatch):
  directory = tmp_path / "checkpoints"
  _save(directory, 1, 2)
  _rotate_on_first_read(monkeypatch, directory)
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.read_params(str(directory), _target(), step=2)
  message = str(e.value)
  assert "\n" not in message
  assert "checkpoint 2 in" in message and "was removed while it was read" in (
    message
  )


def test_a_corrupt_checkpoint_is_not_retried(tmp_path):
  """A checkpoint that is there but unreadable is reported as it is."""
  directory = tmp_path / "checkpoints"
  _save(directory, 1)
  for f in (directory / "1" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.read_params(str(directory), _target())
  assert "was removed" not in str(e.value)


def test_unreadable_checkpoints_are_not_nothing_trained(tmp_path, monkeypatch):
  """A checkpoints folder this user may not read is said to be so, not
  reported as holding no checkpoint. (Simulated: the tests may run as
  root, who reads any folder.)"""
  directory = tmp_path / "checkpoints"
  _save(directory, 1)

  def denied(path):
    raise PermissionError(13, "Permission denied", path)

  monkeypatch.setattr(checkpoint.paths, "listdir", denied)
  with pytest.raises(checkpoint.CheckpointError, match="permission denied"):
    checkpoint.finished_steps(str(directory))
