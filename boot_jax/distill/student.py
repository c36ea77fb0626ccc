"""The one-step student `g(eps, t, c)`.

The student always reads the same pure noise `eps` and a time `t`, and
predicts the signal `y_t` of the teacher's DDIM trajectory that starts at
`eps` (docs/method.md). For learned teachers it is the teacher's own network,
initialised from the teacher's weights; for the analytic teacher a fresh
network.

How the network's raw output becomes `y_t` (`parameterization`):

* 'direct': the raw output is `y_t`.
* 'teacher': the raw output is read through the teacher's own conversion
  at the noise end, `y_t = x0(out, x=eps, alpha_T, sigma_T)`. At
  initialisation the student then equals the teacher's x0-prediction at
  `(eps, T)`, which is exactly the boundary target. This is well
  conditioned for v-, x0- and flow-prediction teachers (a flow teacher at
  `t = 1` reads `x0 = eps - u`); for eps-prediction
  teachers it divides by `alpha_T` and is not offered.
* 'auto' (default): 'teacher' for v, x0 and flow teachers, else 'direct'.

`space='x'` is the ablation that reads the output as `x_t` itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from boot_jax import models
from boot_jax.config import defaults
from boot_jax.diffusion import predictions
from boot_jax.models import layers
from boot_jax.teachers import base

PARAMETERIZATIONS = ("auto", "direct", "teacher")
SPACES = ("signal", "x")


@dataclasses.dataclass(frozen=True, eq=False)
class Student:
  """A student network and how to read it.

  Attributes:
    module: the Flax network `(x, t, cond) -> raw output`.
    schedule: the teacher's schedule.
    sample_shape: shape of one sample.
    condition: the teacher's condition spec.
    parameterization: 'direct' or 'teacher' (resolved, never 'auto').
    prediction: the teacher's native prediction (for 'teacher').
    space: 'signal' (predict y_t) or 'x' (predict x_t; ablation).
    guided: the network also reads the guidance scale `w` (a
      guidance-conditioned student: one student for any w).
  """

  module: Any
  schedule: predictions.Schedule
  sample_shape: tuple[int, ...]
  condition: base.ConditionSpec
  parameterization: str = "direct"
  prediction: str = "x0"
  space: str = "signal"
  guided: bool = False

  def raw(self, params, eps, t, cond=None, train: bool = False, guidance=None):
    if not self.guided:
      return self.module.apply({"params": params}, eps, t, cond, train=train)
    if guidance is None:
      raise ValueError("this student is guidance-conditioned: give a guidance")
    return self.module.apply(
      {"params": params}, eps, t, cond, train=train, guidance=guidance
    )

  def apply(self, params, eps, t, cond=None, guidance=None):
    """`g(eps, t, c[, w])`: `y_t` (or `x_t` when `space == 'x'`).

    `t` and `guidance` are scalars or per-example `[B]`.
    """
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), eps.shape[:1])
    out = self.raw(params, eps, t, cond, guidance=guidance)
    if self.parameterization == "teacher":
      alpha_T, sigma_T = self.schedule.alpha_sigma(
        jnp.full(eps.shape[:1], self.schedule.t_max)
      )
      out = predictions.to_x0(out, eps, alpha_T, sigma_T, self.prediction)
    return out

  def x_t(self, params, eps, t, cond=None, guidance=None):
    """The trajectory point `x_t = alpha_t g(eps, t) + sigma_t eps`."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), eps.shape[:1])
    out = self.apply(params, eps, t, cond, guidance)
    if self.space == "x":
      return out
    alpha, sigma = self.schedule.alpha_sigma(t)
    return predictions.x_from_signal(out, eps, alpha, sigma)

  def generate(self, params, eps, cond=None, guidance=None):
    """One-step sampling: the trajectory's clean end from `eps`."""
    return self.x_t(params, eps, self.schedule.t_clean, cond, guidance)

  def trajectory(self, params, eps, ts, cond=None, guidance=None):
    """`x_t` for every `t` in `ts` at once: `[len(ts), B, ...]`."""
    ts = jnp.asarray(ts, jnp.float32)
    return jax.vmap(lambda t: self.x_t(params, eps, t, cond, guidance))(ts)


def resolve_parameterization(name: str, prediction: str) -> str:
  if name not in PARAMETERIZATIONS:
    raise ValueError(
      f"unknown student parameterization {name!r}; expected {PARAMETERIZATIONS}"
    )
  if name == "auto":
    return "teacher" if prediction in ("v", "x0", "flow") else "direct"
  if name == "teacher" and prediction == "eps":
    raise ValueError(
      "student.parameterization='teacher' divides by alpha_T for an "
      "eps-prediction teacher; use 'direct'"
    )
  return name


def build_student(
  teacher: base.Teacher,
  config,
  key,
  dtype=None,
  remat: bool | str = False,
  guided: bool = False,
  attention: str = "auto",
):
  """Builds the student and a function that makes its initial parameters.

  With a network teacher (`teacher.module` set) the student is the same
  network (optionally with another computation dtype and rematerialised
  blocks) starting from a copy of the teacher's weights; otherwise (the
  analytic teacher) it is `config.model`, freshly initialised from `key`.

  Args:
    teacher: the frozen teacher.
    config: the `student` config section.
    key: PRNG key for fresh initialisation.
    dtype: computation dtype of the network (None: float32); parameters
      stay float32.
    remat: rematerialise the network's blocks in the backward pass (a
      policy of `models.layers.rematted`: 'none', 'block', 'dots').
    guided: add a zero-initialised guidance embedding, so the network
      reads `w` too (it starts as the teacher's network exactly).
    attention: the network's attention implementation (`models.attention`).

  Returns:
    `(student, params_fn)`: `params_fn(teacher_params)` returns the initial
    parameters (plain arrays that never alias the teacher's buffers); jit
    it with out_shardings to build them sharded.
  """
  space = config.get("space", "signal")
  if space not in SPACES:
    raise ValueError(f"unknown student space {space!r}; expected {SPACES}")
  fresh = teacher.module is None or config.get("init", "teacher") == "fresh"
  if fresh:
    model = dict(config.model)
    if "time_scale" in model and model["time_scale"] is None:
      model["time_scale"] = defaults.network_time_scale(teacher.schedule.kind)
    module = models.make_model(
      model, teacher.sample_shape, teacher.condition.num_classes
    )
    prediction = "x0"
    parameterization = "direct"
  else:
    module = teacher.module
    prediction = teacher.prediction
    parameterization = resolve_parameterization(
      config.get("parameterization", "auto"), prediction
    )
  changes = dict(dtype=dtype)
  fields = getattr(module, "__dataclass_fields__", {})
  if "attention" in fields:
    changes["attention"] = attention
  remat = layers.remat_policy(remat)
  if remat != "none" and "remat" in fields:
    changes["remat"] = remat  # the network rematerialises its own blocks
  if guided:
    if teacher.condition.kind == "none":
      raise ValueError(
        "boot.guidance_range needs a conditional teacher (guidance mixes "
        "its conditional and null outputs)"
      )
    if "guidance_embedding" not in getattr(module, "__dataclass_fields__", {}):
      raise ValueError(
        f"{type(module).__name__} cannot read a guidance scale; unset "
        "boot.guidance_range"
      )
    changes["guidance_embedding"] = True
  module = module.clone(**changes)
  if remat != "none" and "remat" not in fields:
    # A network without its own switch (diffusers' UNet) is rematerialised
    # whole: only its inputs are kept for the backward pass.
    kwargs = {
      f: getattr(module, f) for f in fields if f not in ("parent", "name")
    }
    module = layers.rematted(type(module), remat)(**kwargs)
  student = Student(
    module=module,
    schedule=teacher.schedule,
    sample_shape=tuple(teacher.sample_shape),
    condition=teacher.condition,
    parameterization=parameterization,
    prediction=prediction,
    space=space,
    guided=guided,
  )

  def params_fn(teacher_params):
    if fresh:
      return init_params(module, teacher, key)
    copy = jax.tree.map(jnp.copy, teacher_params)
    if not guided:
      return copy
    # The teacher's weights, plus the new (zero-output) guidance embedding.
    new = traverse_util.flatten_dict(init_params(module, teacher, key))
    old = traverse_util.flatten_dict(copy)
    merged = {k: old.get(k, v) for k, v in new.items()}
    return traverse_util.unflatten_dict(merged)

  return student, params_fn


def make_student(teacher: base.Teacher, config, key) -> tuple[Student, Any]:
  """`build_student` with its initial parameters computed (float32)."""
  student, params_fn = build_student(teacher, config, key)
  return student, jax.jit(params_fn)(teacher.params)


def init_params(module, teacher: base.Teacher, key):
  """Fresh parameters for a network reading this teacher's inputs."""
  return models.init_params(
    module, key, teacher.sample_shape, teacher.null_condition(1)
  )


def num_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
