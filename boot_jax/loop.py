"""The smallest BOOT loop: build everything from a config, then step.

`train.py` adds the work directory, checkpoints and evaluation around it;
tests and benchmarks call `setup` and `run` directly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from boot_jax import boot, conditions, config_lib, optim, teachers
from boot_jax import state as state_lib
from boot_jax import step as step_lib
from boot_jax import student as student_lib


@dataclasses.dataclass
class Setup:
  """What a run is made of, built once from the resolved config."""

  config: Any
  teacher: teachers.Teacher
  student: student_lib.Student
  grids: list[boot.Grid]  # one per curriculum stage, the finest last
  optimizer: optax.GradientTransformation
  train_step: Callable  # jitted (state, teacher_params, batch)
  draw: Callable  # jitted (step, stage) -> batch; stage is static
  init_params: Any

  @property
  def grid(self) -> boot.Grid:
    """The training grid (the finest; DDIM-N references use it)."""
    return self.grids[-1]

  def stage(self, step: int) -> int:
    """The curriculum stage of a step (0 without a curriculum)."""
    n = len(self.grids)
    return min(int(step) * n // max(self.config.train.steps, 1), n - 1)

  def init_state(self) -> state_lib.TrainState:
    ema = self.config.optim.ema_decay is not None
    return jax.jit(lambda p: state_lib.create(p, self.optimizer, ema))(
      self.init_params
    )


def curriculum_grids(schedule, config) -> list[boot.Grid]:
  """Grids of N / 2^(k-1), ..., N / 2, N steps (at least one step each)."""
  stages = config.curriculum_stages
  sizes = [max(config.num_steps >> (stages - 1 - k), 1) for k in range(stages)]
  return [boot.make_grid(schedule, n, config.spacing) for n in sizes]


def setup(config) -> Setup:
  """Builds teacher, student, grids, optimizer and the jitted functions."""
  config_lib.validate(config)
  teacher = teachers.build_teacher(config.teacher)
  key = jax.random.key(config.train.seed)
  k_init, k_data = jax.random.split(key)
  student, params = student_lib.make_student(teacher, config.student, k_init)
  grids = curriculum_grids(teacher.schedule, config.boot)
  optimizer = optim.make_optimizer(config.optim, config.train.steps)
  train_step = step_lib.jit_train_step(
    step_lib.make_train_step(
      student, teacher, optimizer, config.boot, config.optim.ema_decay
    )
  )
  indices = jnp.arange(config.train.batch_size)
  label_logits = config.teacher.get("label_logits")
  label_logits = None if label_logits is None else jnp.asarray(label_logits)

  def draw(step, stage):
    return conditions.draw_batch(
      k_data,
      step,
      indices,
      teacher.sample_shape,
      teacher.condition,
      grids[stage],
      label_logits,
    )

  return Setup(
    config=config,
    teacher=teacher,
    student=student,
    grids=grids,
    optimizer=optimizer,
    train_step=train_step,
    draw=jax.jit(draw, static_argnums=1),
    init_params=params,
  )


def run(
  s: Setup,
  state: state_lib.TrainState | None = None,
  until: int | None = None,
  on_log: Callable[[int, dict], None] | None = None,
):
  """Steps from `state` (or a fresh one) up to step `until` (default: all).

  Returns:
    `(state, history)`: history is a list of logged metric dicts.
  """
  if state is None:
    state = s.init_state()
  until = s.config.train.steps if until is None else until
  log_every = s.config.train.log_every
  history = []
  start = int(state.step)
  t0 = time.perf_counter()
  for step in range(start, until):
    batch = s.draw(step, s.stage(step))
    state, metrics = s.train_step(state, s.teacher.params, batch)
    if (step + 1) % log_every == 0 or step + 1 == until:
      row = {k: float(v) for k, v in jax.device_get(metrics).items()}
      row["step"] = step + 1
      row["steps_per_s"] = (step + 1 - start) / (time.perf_counter() - t0)
      row["num_grid_steps"] = s.grids[s.stage(step)].num_steps
      history.append(row)
      if on_log is not None:
        on_log(step + 1, row)
      if not np.isfinite(row["loss"]):
        raise FloatingPointError(f"loss is {row['loss']} at step {step + 1}")
  return state, history
