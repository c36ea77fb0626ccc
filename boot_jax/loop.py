"""Training loops: the BOOT setup, and one driver for every trainer.

`setup` builds everything a BOOT run needs from a resolved config. `drive`
runs any jitted step function with logging, periodic and final
checkpoints, evaluation hooks, a non-finite-loss stop and a clean stop on
SIGTERM/SIGINT (a preempted TPU VM receives SIGTERM): it saves a checkpoint
of the current step before exiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from boot_jax import (
  boot,
  checkpoint,
  conditions,
  config_lib,
  metrics,
  models,
  optim,
  prompts,
  sharding,
  teachers,
)
from boot_jax import state as state_lib
from boot_jax import step as step_lib
from boot_jax import student as student_lib
from boot_jax import workdir as workdir_lib


class NonFiniteLoss(FloatingPointError):
  """The loss or gradient became NaN or infinite (policy 'stop')."""


class Interrupted(RuntimeError):
  """A stop signal arrived; the state was checkpointed first."""

  def __init__(self, signum: int, step: int):
    name = signal.Signals(signum).name
    super().__init__(f"received {name} at step {step}; checkpoint saved")
    self.signum = signum
    self.step = step


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def compute_dtype(config):
  """The networks' computation dtype from `train.compute_dtype`."""
  name = config.train.get("compute_dtype", "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(
      f"train.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got "
      f"{name!r}"
    )
  return COMPUTE_DTYPES[name]


@dataclasses.dataclass
class Setup:
  """What a BOOT run is made of, built once from the resolved config.

  The state is only ever built through `init_state` (one jit whose
  out_shardings spread it over the mesh) or restored onto
  `abstract_state()`; nothing full size is materialised on one device.
  """

  config: Any
  teacher: teachers.Teacher
  student: student_lib.Student
  grids: list[boot.Grid]  # one per curriculum stage, the finest last
  optimizer: optax.GradientTransformation
  train_step: Callable  # jitted (state, teacher_params, batch)
  draw: Callable  # (step, stage) -> global batch; stage is static
  create: Callable  # teacher_params -> state (un-jitted)
  state_shardings: Any
  num_params: int
  mesh: Any = None
  traces: list = dataclasses.field(default_factory=list)

  @property
  def grid(self) -> boot.Grid:
    """The training grid (the finest; DDIM-N references use it)."""
    return self.grids[-1]

  def stage(self, step: int) -> int:
    """The curriculum stage of a step (0 without a curriculum)."""
    n = len(self.grids)
    return min(int(step) * n // max(self.config.train.steps, 1), n - 1)

  def init_state(self) -> state_lib.TrainState:
    return jax.jit(self.create, out_shardings=self.state_shardings)(
      self.teacher.params
    )

  def abstract_state(self):
    """The state's shapes, dtypes and shardings, without computing it."""
    abstract = jax.eval_shape(self.create, self.teacher.params)
    return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      self.state_shardings,
    )

  def step_fn(self, state, step: int):
    batch = self.draw(step, self.stage(step))
    return self.train_step(state, self.teacher.params, batch)


def curriculum_grids(schedule, config) -> list[boot.Grid]:
  """Grids of N / 2^(k-1), ..., N / 2, N steps (at least one step each)."""
  stages = config.curriculum_stages
  sizes = [max(config.num_steps >> (stages - 1 - k), 1) for k in range(stages)]
  return [boot.make_grid(schedule, n, config.spacing) for n in sizes]


def _placement(config, mesh, rules):
  """Where the frozen teacher goes: replicated, or over fsdp when large."""

  def place(abstract, specs):
    mode = sharding.teacher_placement(config, sharding.tree_bytes(abstract))
    if mode == "replicate":
      return jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    return sharding.tree_shardings(abstract, specs, mesh, rules)

  return place


def setup(config, teacher: teachers.Teacher | None = None) -> Setup:
  """Builds teacher, student, grids, optimizer and the jitted functions.

  Phases: mesh -> teacher (restored straight into its shardings) ->
  student and the state's shardings (abstract, from the parameters'
  logical axis names and `config.sharding.rules`) -> the jitted step and
  the process-local input draw.
  """
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.batch_size_per_shard(mesh, config.train.batch_size)
  rules = sharding.rules_from_config(config)
  dtype = compute_dtype(config)
  place = _placement(config, mesh, rules)
  if teacher is None:
    teacher = teachers.build_teacher(
      config.teacher, placement=place, dtype=dtype
    )
  else:
    specs = jax.tree.map(lambda _: P(), teacher.params)
    teacher = dataclasses.replace(
      teacher,
      params=jax.device_put(teacher.params, place(teacher.params, specs)),
    )
  key = jax.random.key(config.train.seed)
  k_init, k_data = jax.random.split(key)
  student, params_fn = student_lib.build_student(
    teacher,
    config.student,
    k_init,
    dtype=dtype,
    remat=bool(config.train.get("remat", False)),
    guided=config.boot.get("guidance_range") is not None,
  )
  optimizer = optim.make_optimizer(config.optim, config.train.steps)
  ema = config.optim.ema_decay is not None

  def create(teacher_params):
    return state_lib.create(params_fn(teacher_params), optimizer, ema)

  # Logical names ride along in the parameters' boxes through the
  # optimizer's init, so moments and EMA get their parameter's spec.
  boxed = models.boxed_abstract_params(
    student.module, student.sample_shape, teacher.null_condition(1)
  )
  specs = sharding.logical_specs(
    jax.eval_shape(lambda p: state_lib.create(p, optimizer, ema), boxed)
  )
  abstract = jax.eval_shape(create, teacher.params)
  section = config.get("sharding") or {}
  state_shardings = sharding.tree_shardings(
    abstract,
    specs,
    mesh,
    rules,
    fsdp_fallback=bool(section.get("fsdp_fallback", True)),
  )
  grids = curriculum_grids(teacher.schedule, config.boot)
  step_fn = step_lib.make_train_step(
    student,
    teacher,
    optimizer,
    config.boot,
    config.optim.ema_decay,
    config.train.nan_policy,
  )
  traces = []

  def counted_step(*args):
    traces.append("train_step")  # runs once per trace, never per step
    return step_fn(*args)

  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  train_step = step_lib.jit_train_step(
    counted_step,
    in_shardings=(
      state_shardings,
      jax.tree.map(lambda x: x.sharding, teacher.params),
      batch_sharding,
    ),
    out_shardings=(state_shardings, replicated),
  )
  batch_size = config.train.batch_size
  local_np = sharding.local_indices(batch_sharding, batch_size)
  indices = jnp.asarray(local_np)
  label_logits = config.teacher.get("label_logits")
  label_logits = None if label_logits is None else jnp.asarray(label_logits)
  guidance_range = config.boot.get("guidance_range")
  if guidance_range is not None:
    guidance_range = tuple(float(w) for w in guidance_range)

  @functools.partial(jax.jit, static_argnums=1)
  def draw_local(step, stage):
    return conditions.draw_batch(
      k_data,
      step,
      indices,
      teacher.sample_shape,
      teacher.condition,
      grids[stage],
      label_logits,
      guidance_range,
    )

  prompt_set = None
  if teacher.condition.kind == "text":
    prompt_set = teacher.extras.get("prompts")
    if prompt_set is None:
      raise ValueError(
        "a text-to-image teacher trains on prompts: set teacher.prompts to "
        "a prompt file (.txt, .jsonl, .csv or .parquet)"
      )

  def draw(step, stage):
    # Each process draws only its rows (keys fold in the global example
    # index), so the global batch does not depend on the process count.
    local = draw_local(step, stage)
    if prompt_set is not None:
      rows = prompts.prompt_indices(
        config.train.seed, int(step) * batch_size + local_np, len(prompt_set)
      )
      local = dict(local, cond=prompt_set.rows(rows))
    return sharding.assemble_batch(batch_sharding, local, batch_size)

  return Setup(
    config=config,
    teacher=teacher,
    student=student,
    grids=grids,
    optimizer=optimizer,
    train_step=train_step,
    draw=draw,
    create=create,
    state_shardings=state_shardings,
    num_params=student_lib.num_params(abstract.params),
    mesh=mesh,
    traces=traces,
  )


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
        row["steps_per_s"] = (
          (done - step_last) / elapsed if done > step_last else float("nan")
        )
        t_last, step_last = now, done
        history.append(dict(row, step=done))
        if d.log is not None:
          d.log(done, row)
      if d.stop_on_nonfinite and (log_now or ckpt_now or received):
        _check_finite(state, done, last_saved)
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


def run(s: Setup, state=None, until: int | None = None, on_log=None):
  """The smallest BOOT loop (no work directory): for tests and benchmarks.

  Returns:
    `(state, history)`.
  """
  if state is None:
    state = s.init_state()
  total = s.config.train.steps if until is None else until
  driver = Driver(
    total_steps=total,
    step_fn=s.step_fn,
    log_every=s.config.train.log_every,
    log=on_log,
    sync=sharding.needs_step_sync(s.mesh),
    stop_on_nonfinite=s.config.train.nan_policy == "stop",
  )
  return drive(state, driver)


def progress_logger(total: int, writer=None, tb=None, printer=print):
  """A `Driver.log` that writes JSONL/TensorBoard rows and a progress line."""

  def log(step, row):
    if writer is not None:
      writer.write(step, row)
    if tb is not None:
      tb.write(step, row)
    printer(metrics.progress_line(step, total, row["steps_per_s"], row))

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
    evaluate: `(step, state) -> None`, every `train.eval_every` steps.
    printer: where progress lines go.
    sync: wait for each step (multi-device CPU meshes).

  Returns:
    `(state, history)`.
  """
  resuming = workdir_lib.check(workdir, config)
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"), config.train.keep_checkpoints
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
  if lead:
    workdir_lib.write_config(workdir, config)
    workdir_lib.truncate_metrics(workdir, int(state.step))
  writer = metrics.MetricWriter(workdir, enabled=lead)
  tb = metrics.TensorBoard(workdir, enabled=lead)
  t = config.train
  driver = Driver(
    total_steps=t.steps,
    step_fn=step_fn,
    log_every=t.log_every,
    ckpt_every=t.ckpt_every,
    eval_every=t.eval_every,
    save=lambda step, st: ckpt.save(step, items(st)),
    wait=ckpt.wait,
    log=progress_logger(t.steps, writer, tb, printer if lead else _quiet),
    evaluate=evaluate,
    sync=sync,
    stop_on_nonfinite=t.get("nan_policy", "stop") == "stop",
  )
  try:
    state, history = drive(state, driver, last_saved=last)
    if ckpt.latest_step() is None:
      # Nothing to run (train.steps=0): keep the initial state, so the
      # work directory can be sampled from (e.g. the teacher's samplers).
      ckpt.save(int(state.step), items(state))
    return state, history
  finally:
    ckpt.close()
    tb.close()
