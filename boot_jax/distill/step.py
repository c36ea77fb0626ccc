"""The BOOT train step: one pure function, jitted once with donation."""

from __future__ import annotations

import jax
import optax

from boot_jax.distill import boot
from boot_jax.distill import state as state_lib
from boot_jax.distill.student import Student
from boot_jax.teachers.base import Teacher


def make_loss_fn(student: Student, teacher: Teacher, config):
  """`(params, teacher_params, batch) -> (loss, metrics)` from `config.boot`."""
  guidance = config.get("guidance")

  def loss_fn(params, teacher_params, batch):
    student_fn = student.apply

    def teacher_fn(x, t, cond):
      return teacher.x0(teacher_params, x, t, cond, guidance)

    if student.guided:
      # Each example's w rides with its condition, so the teacher guides
      # with it and the student reads it, at every point of the batch.
      batch = dict(batch, cond=dict(label=batch["cond"], w=batch["w"]))

      def student_fn(p, eps, t, c):
        return student.apply(p, eps, t, c["label"], c["w"])

      def teacher_fn(x, t, c):
        return teacher.x0(teacher_params, x, t, c["label"], c["w"])

    return boot.boot_loss(
      params,
      batch,
      student_fn,
      teacher_fn,
      boundary_weight=config.boundary_weight,
      weighting=config.weighting,
      weight_clip=config.get("weight_clip"),
      space=student.space,
      boundary_target=config.boundary_target,
    )

  return loss_fn


def make_train_step(
  student: Student,
  teacher: Teacher,
  optimizer: optax.GradientTransformation,
  boot_config,
  ema_decay: float | None = None,
  nan_policy: str = "stop",
):
  """The un-jitted step `(state, teacher_params, batch) -> (state, metrics)`.

  Gradients flow only into the student's parameters; the teacher's are an
  argument (never a traced-in constant, so a large teacher is not baked
  into the program). A non-finite loss or gradient leaves the state
  unchanged (see `state.apply_gradients`).
  """
  loss_fn = make_loss_fn(student, teacher, boot_config)

  def train_step(state: state_lib.TrainState, teacher_params, batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, teacher_params, batch)
    state, grad_norm = state_lib.apply_gradients(
      state, grads, loss, optimizer, ema_decay, nan_policy
    )
    metrics["grad_norm"] = grad_norm
    metrics["skipped"] = state.skipped
    return state, metrics

  return train_step


def jit_train_step(train_step, **jit_kwargs):
  """Jits the step, donating the state (argument 0)."""
  return jax.jit(train_step, donate_argnums=(0,), **jit_kwargs)
