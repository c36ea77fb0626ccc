"""Checkpoints: the only module that imports orbax.

`Checkpointer` wraps an orbax CheckpointManager over `W/checkpoints/`:
asynchronous saves (wait before exit), the last `max_to_keep` kept, restore
onto an abstract target that carries dtypes, shapes and shardings (so a
checkpoint restores onto another device layout). A checkpoint holds named
items (e.g. `state` for resuming and `params` for consumers such as a
student reading its teacher), and any subset of them can be restored.
Orbax writes each step to a temporary directory and renames it when
complete, so a process killed mid-save leaves the previous checkpoints
intact.
"""

from __future__ import annotations

import contextlib
import errno
import re

import jax
import orbax.checkpoint as ocp

from boot_jax.runtime import paths

# Orbax's mark of a finished step on object stores (no atomic rename).
_COMMIT_MARKER = "commit_success.txt"


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored (corrupt, truncated, mismatched)."""


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _shapes(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): tuple(getattr(v, "shape", ())) for p, v in leaves}


def check_fits(item_dir: str, target, key: str | None = None) -> None:
  """Raises CheckpointError if a saved item's arrays do not fit `target`.

  Compares the saved metadata (names and shapes) with the target before
  restoring, so a mismatch is reported by name, without starting a restore.
  Unreadable metadata is left for the restore itself to report. With
  `key`, `target` is compared with that entry of the saved tree.
  """
  checkpointer = ocp.StandardCheckpointer()
  try:
    meta = checkpointer.metadata(item_dir)
  except Exception:  # noqa: BLE001 - corrupt metadata: restore reports it
    return
  finally:
    checkpointer.close()
  saved = getattr(meta, "item_metadata", meta)
  if key is not None:
    try:
      saved = saved[key]
    except (KeyError, TypeError):
      raise CheckpointError(
        f"{item_dir} does not fit the config: it has no {key}"
      ) from None
  saved = _shapes(saved)
  wanted = _shapes(target)
  if wanted and not saved:
    raise CheckpointError(
      f"{item_dir} has empty or unreadable metadata: a corrupt or "
      "truncated checkpoint"
    )
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  if missing or extra:
    raise CheckpointError(
      f"{item_dir} does not fit the config: "
      + (f"{missing[0]} is not in the checkpoint" if missing else "")
      + ("; " if missing and extra else "")
      + (
        f"the checkpoint has {extra[0]}, which the config does not"
        if extra
        else ""
      )
    )
  for name, shape in wanted.items():
    if saved[name] != shape:
      raise CheckpointError(
        f"{item_dir} does not fit the config: {name} has shape "
        f"{saved[name]} in the checkpoint, the config expects {shape}"
      )


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _restore(manager, step: int, args, where: str):
  """`manager.restore`, any orbax failure one CheckpointError line."""
  try:
    return manager.restore(step, args=args)
  except Exception as e:  # noqa: BLE001 - orbax raises many types
    reason = " ".join(str(e).split())[:400]
    raise CheckpointError(
      f"checkpoint {where} cannot be restored: {type(e).__name__}: {reason}"
    ) from e


class Checkpointer:
  """Saves and restores a train state under one directory.

  Args:
    directory: where the numbered step directories live.
    max_to_keep: how many of the latest checkpoints to keep.
    async_save: write in a background thread (call `wait` before exit).
    read_only: only read (nothing is created or cleaned up).
  """

  def __init__(
    self,
    directory: str,
    max_to_keep: int = 3,
    async_save: bool = True,
    read_only: bool = False,
  ):
    self.directory = paths.abspath(directory)
    if read_only and not paths.isdir(self.directory):
      raise CheckpointError(f"no checkpoint directory {self.directory}")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep,
      save_interval_steps=0 if read_only else 1,
      enable_async_checkpointing=async_save and not read_only,
      create=not read_only,
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._pending = None

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, items: dict) -> None:
    """Starts saving the named pytrees as `step` (returns before written).

    Raises:
      CheckpointError: the write failed (a full disk says so first); the
        earlier checkpoints are untouched (orbax writes to a temporary
        directory and renames it when complete).
    """
    args = ocp.args.Composite(
      **{k: ocp.args.StandardSave(v) for k, v in items.items()}
    )
    with self._save_errors(step):
      self._manager.save(int(step), args=args, force=True)
    self._pending = int(step)

  def restore(self, targets: dict, step: int | None = None) -> dict:
    """Restores named items of `step` (default: the latest).

    Args:
      targets: item name -> a pytree of arrays or ShapeDtypeStructs (with
        shardings) giving the structure, shapes, dtypes and placement.
      step: which checkpoint; the latest when None.

    Returns:
      item name -> restored pytree.

    Raises:
      CheckpointError: no checkpoint, or one that is unreadable or does
        not fit `target`, with a one-line reason.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    for name, target in targets.items():
      check_fits(paths.join(self.directory, str(step), name), target)
    args = ocp.args.Composite(
      **{
        k: ocp.args.StandardRestore(abstract_like(v))
        for k, v in targets.items()
      }
    )
    where = paths.join(self.directory, str(step))
    restored = _restore(self._manager, step, args, where)
    return {k: restored[k] for k in targets}

  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    with self._save_errors(self._pending):
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

  @contextlib.contextmanager
  def _save_errors(self, step):
    try:
      yield
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many
      raise CheckpointError(self._save_failure(step, e)) from e

  def _save_failure(self, step, error: Exception) -> str:
    text = " ".join(str(error).split())
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
      nxt = chain[-1].__cause__ or chain[-1].__context__
      if nxt in chain:
        break
      chain.append(nxt)
    full = text + " " + " ".join(" ".join(str(c).split()) for c in chain)
    # An asynchronous save's failure surfaces at a later call: name the
    # step whose write failed, from the temporary directory's name.
    failed = re.search(r"checkpoints/(\d+)\.orbax-checkpoint-tmp", full)
    step = int(failed.group(1)) if failed else step
    good = [s for s in self._good_steps() if s != step]
    kept = (
      f"the last good checkpoint is step {max(good)}"
      if good
      else "no earlier checkpoint exists"
    )
    if any(getattr(c, "errno", None) == errno.ENOSPC for c in chain) or (
      "No space left" in full or "ENOSPC" in full
    ):
      return (
        f"disk full while saving the checkpoint of step {step} in "
        f"{self.directory}; {kept}; free space and rerun to resume"
      )
    return (
      f"saving the checkpoint of step {step} in {self.directory} failed "
      f"({type(error).__name__}: {text[:300]}); {kept}"
    )

  def _good_steps(self) -> list[int]:
    try:
      return finished_steps(self.directory)
    except CheckpointError:  # unreadable: the failure at hand says more
      return []


def finished_steps(directory: str) -> list[int]:
  """The steps of finished checkpoints under `directory`, unsorted (none
  when it does not exist; CheckpointError when it cannot be read).

  Locally orbax renames a step's temporary directory to its number once
  complete; on an object store (no atomic rename) it writes the step's
  directory directly and marks it finished with `commit_success.txt`.
  """
  try:
    steps = [int(d) for d in paths.listdir(directory) if d.isdigit()]
  except PermissionError:
    # Not "nothing trained": the checkpoints are there, unreadable to us.
    raise CheckpointError(
      f"cannot read {directory}: permission denied"
    ) from None
  except OSError:
    return []
  if paths.is_remote(directory):
    steps = [
      s
      for s in steps
      if paths.exists(paths.join(directory, str(s), _COMMIT_MARKER))
    ]
  return steps


def read_item(directory: str, name: str, target, step: int | None = None):
  """Reads one item of a checkpoint without touching the directory."""
  ckpt = Checkpointer(directory, read_only=True)
  try:
    return ckpt.restore({name: target}, step)[name]
  finally:
    ckpt.close()


def _saved_tree(item_dir: str):
  checkpointer = ocp.StandardCheckpointer()
  try:
    meta = checkpointer.metadata(item_dir)
  except Exception as e:  # noqa: BLE001 - orbax raises many types
    raise CheckpointError(
      f"{item_dir} has unreadable metadata: {' '.join(str(e).split())[:200]}"
    ) from None
  finally:
    checkpointer.close()
  return getattr(meta, "item_metadata", meta)


def read_params(directory: str, target, step: int | None = None):
  """The parameters of a train state's checkpoint, without the rest.

  Reads only `ema_params` (when the run kept an EMA) or `params`, and the
  step, from the item `state`, onto `target` (ShapeDtypeStructs with
  shardings: any mesh); the optimizer state is never read.

  A running training may remove the checkpoint being read (it keeps only
  the latest few): the latest one is then read instead (a few times at
  most); a `step` asked for that is removed is one error line saying so.

  Returns:
    `(params, step)`.
  """
  for attempt in range(_ROTATION_RETRIES + 1):
    try:
      return _read_params(directory, target, step)
    except CheckpointError as e:
      chosen = getattr(e, "step", None)
      if chosen is None or paths.exists(paths.join(directory, str(chosen))):
        raise  # not a checkpoint that retention removed
      if step is not None or attempt == _ROTATION_RETRIES:
        raise CheckpointError(
          f"checkpoint {chosen} in {directory} was removed while it was "
          "read (a running training keeps only its latest checkpoints)"
        ) from None
  raise AssertionError("unreachable")


# How often `read_params` moves on to a newer checkpoint when the one it
# reads is removed under it (each removal means a newer save finished).
_ROTATION_RETRIES = 3


def _read_params(directory: str, target, step: int | None):
  ckpt = Checkpointer(directory, read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {ckpt.directory}")
    item_dir = paths.join(ckpt.directory, str(step), "state")
    try:
      return _read_state_params(ckpt, item_dir, target, step)
    except CheckpointError as e:
      e.step = step  # read_params checks whether retention removed it
      raise
  finally:
    ckpt.close()


def _read_state_params(ckpt, item_dir: str, target, step: int):
  """`read_params` of one step, from an open read-only Checkpointer."""
  saved = _saved_tree(item_dir)
  if not hasattr(saved, "get") or saved.get("params") is None:
    raise CheckpointError(
      f"{item_dir} has unreadable metadata or is not a train state (a "
      "corrupt checkpoint, or one of an older layout)"
    )
  has_ema = saved.get("ema_params") is not None
  name = "ema_params" if has_ema else "params"
  check_fits(item_dir, target, key=name)
  item = {
    name: abstract_like(target),
    "step": jax.ShapeDtypeStruct((), jax.numpy.int32),
  }
  args = ocp.args.Composite(
    state=ocp.args.PyTreeRestore(
      item=item,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True,
    )
  )
  manager = ckpt._manager  # noqa: SLF001
  restored = _restore(manager, step, args, paths.dirname(item_dir))["state"]
  return restored[name], int(restored["step"])
