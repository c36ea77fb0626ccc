"""The generic training driver, shared by BOOT and teacher training.

`drive` runs any jitted step function with logging, periodic and final
checkpoints, evaluation hooks, a non-finite-loss stop and a clean stop on
SIGTERM/SIGINT (a preempted TPU VM receives SIGTERM): it saves a checkpoint
of the current step before exiting. `run_in_workdir` wraps it in the
work-directory contract (restore or init, config.json, metrics, TensorBoard).
Nothing here knows what is trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable
from typing import Any

import jax

from boot_jax.runtime import checkpoint, paths, sharding
from boot_jax.runtime import workdir as workdir_lib
from boot_jax.training import logs


class NonFiniteLoss(FloatingPointError):
  """The loss or gradient became NaN or infinite (policy 'stop')."""


class Interrupted(RuntimeError):
  """A stop signal arrived; the state was checkpointed first."""

  def __init__(self, signum: int, step: int):
    name = signal.Signals(signum).name
    super().__init__(f"received {name} at step {step}; checkpoint saved")
    self.signum = signum
    self.step = step


@contextlib.contextmanager
def stop_signals():
  """Records SIGTERM/SIGINT instead of dying; yields a list of signums."""
  received: list[int] = []
  handled = (signal.SIGTERM, signal.SIGINT)
  previous = {}

  def handler(signum, frame):
    del frame
    received.append(signum)

  try:
    for s in handled:
      previous[s] = signal.signal(s, handler)
  except ValueError:  # not the main thread: leave signals alone
    previous = {}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


@dataclasses.dataclass
class Driver:
  """How `drive` runs a step function.

  Attributes:
    total_steps: run until `state.step` reaches this.
    step_fn: `(state, step) -> (state, metrics)`, jitted inside.
    log_every, ckpt_every, eval_every: periods in steps (0: never).
    save: `(step, state) -> None`, starts a checkpoint (None: no saving).
    wait: blocks until pending checkpoints are written.
    log: `(step, row) -> None` for each logged row (process 0 only).
    evaluate: `(step, state) -> dict | None` every `eval_every` steps.
    sync: wait for each step before dispatching the next (see
      `sharding.needs_step_sync`).
    stop_on_nonfinite: raise NonFiniteLoss once a step was non-finite
      (nan_policy 'stop'); with 'skip' such steps are only counted.
    max_skipped: with 'skip', raise NonFiniteLoss once more steps than this
      were skipped (None: no limit).
    probe: `params -> {name: float}`, run on every process at each logged
      step on the parameters sampling would use; its values join the row
      (`boot_jax.evaluation.probe`; None: no probe). Its time is not
      counted in steps_per_s.
  """

  total_steps: int
  step_fn: Callable
  log_every: int = 100
  ckpt_every: int = 0
  eval_every: int = 0
  save: Callable | None = None
  wait: Callable = lambda: None
  log: Callable | None = None
  evaluate: Callable | None = None
  sync: bool = False
  stop_on_nonfinite: bool = True
  max_skipped: int | None = None
  probe: Callable | None = None


def _check_skipped(state, d: Driver, step: int, last_saved: int | None):
  if d.stop_on_nonfinite or d.max_skipped is None:
    return
  skipped = int(state.skipped)
  if skipped > d.max_skipped:
    where = (
      f"the last checkpoint is step {last_saved}"
      if last_saved is not None
      else "no checkpoint was saved"
    )
    raise NonFiniteLoss(
      f"{skipped} of {step} steps were skipped for non-finite loss or "
      f"gradient, more than train.max_skipped_fraction allows "
      f"({d.max_skipped} of {d.total_steps}); stopped at step {step}; {where}"
    )


def _check_finite(state, step: int, last_saved: int | None):
  bad = int(state.first_bad_step)
  if bad >= 0:
    where = (
      f"the last good checkpoint is step {last_saved}"
      if last_saved is not None
      else "no checkpoint was saved"
    )
    raise NonFiniteLoss(
      f"loss or gradient became non-finite at step {bad}; stopped at step "
      f"{step}; {where}"
    )


def drive(state, d: Driver, last_saved: int | None = None):
  """Runs `d.step_fn` from `state.step` to `d.total_steps`.

  Returns:
    `(state, history)`: history holds the logged rows.

  Raises:
    NonFiniteLoss: under nan_policy 'stop' (nothing bad is saved).
    Interrupted: after SIGTERM/SIGINT, once the current step is saved.
  """
  history = []
  start = int(state.step)
  # Speed over the last logging interval; the clock starts after the first
  # step, whose call includes compilation.
  t_last, step_last = None, start
  with stop_signals() as received:
    for step in range(start, d.total_steps):
      state, m = d.step_fn(state, step)
      if d.sync:
        jax.block_until_ready(state.step)
      done = step + 1
      if t_last is None:
        t_last, step_last = time.perf_counter(), done
      log_now = d.log_every and (
        done % d.log_every == 0 or done == d.total_steps
      )
      ckpt_now = d.save is not None and (
        done == d.total_steps or (d.ckpt_every and done % d.ckpt_every == 0)
      )
      if log_now:
        row = {k: float(v) for k, v in jax.device_get(m).items()}
        now = time.perf_counter()
        elapsed = now - t_last
        if done > step_last:  # unknown at the first step (compilation)
          row["steps_per_s"] = (done - step_last) / elapsed
        if d.probe is not None:
          row.update(d.probe(params_for_sampling(state)))
        t_last, step_last = time.perf_counter(), done
        history.append(dict(row, step=done))
        if d.log is not None:
          d.log(done, row)
      if log_now or ckpt_now or received:
        if d.stop_on_nonfinite:
          _check_finite(state, done, last_saved)
        _check_skipped(state, d, done, last_saved)
      if ckpt_now or (received and d.save is not None):
        d.save(done, state)
        last_saved = done
      if (
        d.evaluate is not None
        and d.eval_every
        and (done % d.eval_every == 0 or done == d.total_steps)
      ):
        d.evaluate(done, state)
      if received:
        d.wait()
        raise Interrupted(received[0], done)
  d.wait()
  return state, history


def progress_logger(total: int, writer=None, tb=None, printer=print):
  """A `Driver.log` that writes JSONL/TensorBoard rows and a progress line."""

  def log(step, row):
    if writer is not None:
      writer.write(step, row)
    if tb is not None:
      tb.write(step, row)
    printer(logs.progress_line(step, total, row.get("steps_per_s"), row))

  return log


def _quiet(*args, **kwargs):
  del args, kwargs


def params_for_sampling(state):
  """The EMA parameters when kept, else the raw ones."""
  return state.ema_params if state.ema_params is not None else state.params


def run_in_workdir(
  workdir: str,
  config,
  *,
  abstract_state,
  init_state: Callable[[], Any],
  step_fn: Callable,
  items: Callable[[Any], dict],
  evaluate: Callable | None = None,
  printer: Callable = print,
  sync: bool = False,
  total_steps: int | None = None,
  probe: Callable | None = None,
):
  """Runs a trainer under the work-directory contract, resuming if it can.

  Phases: check the directory (read only) -> restore the latest checkpoint
  onto `abstract_state`, or `init_state()` -> only then write config.json
  and open the metric writers -> `drive` with periodic, final and
  on-signal checkpoints.

  Args:
    workdir: the work directory.
    config: the resolved config (`train` section read here).
    abstract_state: the state's ShapeDtypeStructs (with shardings).
    init_state: builds a fresh state.
    step_fn: `(state, step) -> (state, metrics)`.
    items: `state -> {name: pytree}` saved in each checkpoint; must hold
      'state' (what resuming restores).
    evaluate: `(step, state) -> dict | None`, every `train.eval_every`
      steps; a returned `{"images": {tag: uint8 grid}}` goes to TensorBoard,
      `{"scalars": {name: value}}` to metrics.jsonl and TensorBoard.
    printer: where progress lines go.
    sync: wait for each step (multi-device CPU meshes).
    total_steps: run until this step (default `train.steps`).
    probe: a data-free signal logged with each row (`Driver.probe`).

  Returns:
    `(state, history)`.
  """
  resuming = workdir_lib.check(workdir, config)
  ckpt = checkpoint.Checkpointer(
    paths.join(workdir, "checkpoints"), config.train.keep_checkpoints
  )
  last = ckpt.latest_step()
  if last is not None:
    try:
      state = ckpt.restore({"state": abstract_state}, last)["state"]
    except checkpoint.CheckpointError:
      ckpt.close()  # stop orbax's threads before the error is reported
      raise
    printer(f"resuming from the checkpoint of step {last}")
  else:
    if resuming:
      printer(f"{workdir} has no checkpoint yet: starting from step 0")
    state = init_state()
  # Only process 0 writes files; every process takes part in checkpoints.
  lead = sharding.is_lead()
  # A changed config (allowed on resume) replaces config.json only once
  # this run has saved a checkpoint: a run that fails first leaves the
  # directory as it was, resumable with its old command.
  pending = lead and resuming and workdir_lib.config_changed(workdir, config)
  if lead and not pending:
    workdir_lib.write_config(workdir, config)
  if lead:
    workdir_lib.truncate_metrics(workdir, int(state.step), printer)
  writer = logs.MetricWriter(workdir, enabled=lead)
  tb = logs.TensorBoard(workdir, enabled=lead)
  t = config.train
  total = t.steps if total_steps is None else int(total_steps)

  def save(step, st):
    nonlocal pending
    ckpt.save(step, items(st))
    if pending:
      ckpt.wait()
      workdir_lib.write_config(workdir, config)
      pending = False

  def evaluate_and_show(step, st):
    out = evaluate(step, st)
    for tag, grid in (out or {}).get("images", {}).items():
      tb.image(tag, grid, step)
    scalars = (out or {}).get("scalars")
    if scalars:
      writer.write(step, scalars)
      tb.write(step, scalars)
      printer(
        f"evaluation at step {step}: "
        + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scalars.items()))
      )
    return out

  skip_fraction = t.get("max_skipped_fraction")
  driver = Driver(
    total_steps=total,
    step_fn=step_fn,
    log_every=t.log_every,
    ckpt_every=t.ckpt_every,
    eval_every=t.eval_every,
    save=save,
    wait=ckpt.wait,
    log=progress_logger(total, writer, tb, printer if lead else _quiet),
    evaluate=None if evaluate is None else evaluate_and_show,
    sync=sync,
    stop_on_nonfinite=t.get("nan_policy", "stop") == "stop",
    max_skipped=(None if skip_fraction is None else int(skip_fraction * total)),
    probe=probe,
  )
  try:
    state, history = drive(state, driver, last_saved=last)
    if ckpt.latest_step() is None:
      # Nothing to run (train.steps=0): keep the initial state, so the
      # work directory can be sampled from (e.g. the teacher's samplers).
      save(int(state.step), state)
    return state, history
  finally:
    ckpt.close()
    tb.close()
