"""A pixel teacher's denoising training in a work directory:
`train_and_evaluate(config, workdir)`, what `python -m
boot_jax.train_teacher` calls (boot_jax/train_teacher.py describes the
data, the loss and the files), and `ensure_teacher`, which trains a BOOT
config's recipe teacher first when none is there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax import models, teachers
from boot_jax.config import defaults, recipes
from boot_jax.data import datasets
from boot_jax.diffusion import predictions
from boot_jax.distill import state as state_lib
from boot_jax.runtime import lock, paths
from boot_jax.runtime import workdir as workdir_lib
from boot_jax.teachers import base, network
from boot_jax.training import loop, optim


def validate(config) -> None:
  defaults.validate_train(config.train)
  defaults.validate_optim(config.optim)
  for ok, msg in [
    (
      0.0 <= config.label_dropout < 1.0,
      f"label_dropout must be in [0, 1), got {config.label_dropout}",
    ),
  ]:
    if not ok:
      raise ValueError(msg)
  predictions.canonical_prediction(config.diffusion.prediction)


@dataclasses.dataclass
class TeacherRun:
  """A teacher-training run, built from its config."""

  config: Any
  module: Any
  schedule: predictions.Schedule
  prediction: str
  condition: base.ConditionSpec
  sample_shape: tuple[int, ...]
  optimizer: Any
  init_params: Any
  step_fn: Any

  def teacher(self, params) -> base.Teacher:
    """The run's network as a Teacher (for sampling)."""
    module = self.module

    return base.Teacher(
      name="unet",
      apply=base.module_apply(module),
      params=params,
      schedule=self.schedule,
      prediction=self.prediction,
      sample_shape=self.sample_shape,
      condition=self.condition,
      module=module,
    )


def build(config, dataset: datasets.Dataset) -> TeacherRun:
  """The network, the optimizer and the jitted denoising step."""
  config = settings(config)
  size, channels = dataset.images.shape[1], dataset.images.shape[-1]
  sample_shape = (size, size, channels)
  if config.data.image_size != size or config.data.channels != channels:
    raise ValueError(
      f"data gives {size}x{size}x{channels} images but the config says "
      f"image_size={config.data.image_size}, channels={config.data.channels}"
    )
  num_classes = int(config.num_classes)
  if num_classes and dataset.num_classes != num_classes:
    raise ValueError(
      f"num_classes={num_classes} but the data have {dataset.num_classes} "
      "classes"
    )
  condition = (
    base.ConditionSpec("class", num_classes=num_classes)
    if num_classes
    else base.ConditionSpec()
  )
  module = models.make_model(config.model, sample_shape, num_classes)
  schedule = predictions.make_schedule(config.diffusion.schedule)
  prediction = predictions.canonical_prediction(config.diffusion.prediction)
  key = jax.random.key(config.train.seed)
  k_init, k_data = jax.random.split(key)
  params = models.init_params(module, k_init, sample_shape, condition.null(1))
  optimizer = optim.make_optimizer(config.optim, config.train.steps)
  images = jnp.asarray(dataset.images)
  labels = jnp.asarray(np.maximum(dataset.labels, 0))
  batch = config.train.batch_size
  discrete = schedule.kind == "discrete"

  def loss_fn(params, step):
    k = jax.random.fold_in(k_data, step)
    k_idx, k_t, k_eps, k_drop, k_net = jax.random.split(k, 5)
    idx = jax.random.randint(k_idx, (batch,), 0, images.shape[0])
    x0 = images[idx]
    if discrete:
      t = jax.random.randint(k_t, (batch,), 0, schedule.num_train_steps)
      t = t.astype(jnp.float32)
    else:
      t = jax.random.uniform(k_t, (batch,), minval=1e-3, maxval=1.0)
    eps = jax.random.normal(k_eps, x0.shape)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = predictions.x_from_signal(x0, eps, alpha, sigma)
    cond = None
    if num_classes:
      drop = jax.random.bernoulli(k_drop, config.label_dropout, (batch,))
      cond = jnp.where(drop, num_classes, labels[idx]).astype(jnp.int32)
    out = module.apply(
      {"params": params}, x_t, t, cond, train=True, rngs={"dropout": k_net}
    )
    target = predictions.output_from_x0_eps(x0, eps, alpha, sigma, prediction)
    loss = jnp.mean(jnp.square(out - target))
    return loss, {"loss": loss}

  @jax.jit
  def train_step(state, step):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, step
    )
    state, grad_norm = state_lib.apply_gradients(
      state,
      grads,
      loss,
      optimizer,
      config.optim.ema_decay,
      config.train.nan_policy,
    )
    metrics.update(grad_norm=grad_norm, skipped=state.skipped)
    return state, metrics

  return TeacherRun(
    config=config,
    module=module,
    schedule=schedule,
    prediction=prediction,
    condition=condition,
    sample_shape=sample_shape,
    optimizer=optimizer,
    init_params=params,
    step_fn=lambda state, step: train_step(state, step),
  )


def sample_grid(run: TeacherRun, params, num: int, steps: int, seed: int):
  """DDIM samples of the teacher (labels 0..K-1 cycling when conditional)."""
  teacher = run.teacher(params)
  eps = jax.random.normal(jax.random.key(seed), (num,) + run.sample_shape)
  cond = None
  if run.condition.kind == "class":
    cond = jnp.arange(num) % run.condition.num_classes
  ts = run.schedule.timesteps(steps, "trailing")
  guidance = run.config.eval.get("guidance") if cond is not None else None
  fn = jax.jit(lambda e, c: teacher.ddim(params, e, ts, c, guidance))
  return np.asarray(fn(eps, cond))


def settings(config) -> defaults.Settings:
  """A teacher-training config validated once, as read-only `Settings`."""
  return defaults.freeze(
    config, validate, declared=recipes.digits_teacher_config(False)
  )


def train_and_evaluate(config, workdir: str, printer=print):
  """Trains a teacher in `workdir` (resuming from its last checkpoint)."""
  config = settings(config)
  workdir_lib.check(workdir, config)
  with lock.WorkdirLock(workdir):
    return _train_locked(config, workdir, printer)


def _train_locked(config, workdir: str, printer):
  dataset = datasets.load_dataset(config.data)
  printer(f"teacher data: {dataset.name}, {len(dataset)} images")
  run = build(config, dataset)
  ema = config.optim.ema_decay is not None
  create = lambda p: state_lib.create(p, run.optimizer, ema)  # noqa: E731

  def evaluate(step, state):
    params = loop.params_for_sampling(state)
    images = sample_grid(
      run,
      params,
      config.eval.grid_size,
      config.eval.ddim_steps,
      config.eval.seed,
    )
    path = paths.join(workdir, "samples", f"teacher_{step:07d}.png")
    grid = workdir_lib.save_image_grid(
      images, path, ncol=int(np.sqrt(len(images)))
    )
    return {"images": {"samples/teacher": grid}}

  state, history = loop.run_in_workdir(
    workdir,
    config,
    abstract_state=jax.eval_shape(create, run.init_params),
    init_state=lambda: jax.jit(create)(run.init_params),
    step_fn=run.step_fn,
    items=lambda st: {"state": st, "params": loop.params_for_sampling(st)},
    evaluate=evaluate,
    printer=printer,
  )
  return state, history


def ensure_teacher(config, printer=print) -> None:
  """Trains the recipe's teacher into `config.path` if none is there.

  Only our network teachers (`teachers.network`) loaded from a teacher work
  directory (`init='checkpoint'` with a `path`) are considered; a config
  with a `teacher.recipe` names the teacher config to train
  (`recipes.TEACHER_RECIPES`).

  Args:
    config: the `teacher` section of a BOOT config.
    printer: where progress lines go.
  """
  if teachers.family(config.name) is not network:
    return
  if config.get("init", "checkpoint") != "checkpoint" or not config.get("path"):
    return
  if network.trained(config.path):
    return
  recipe = config.get("recipe")
  if not recipe:
    if not paths.isdir(config.path):
      raise network.TeacherError(
        f"teacher directory {config.path!r} does not exist"
      )
    raise network.TeacherError(f"{config.path!r} holds no finished teacher")
  if recipe not in recipes.TEACHER_RECIPES:
    raise network.TeacherError(
      f"unknown teacher.recipe {recipe!r}; expected one of "
      f"{sorted(recipes.TEACHER_RECIPES)}"
    )
  printer(
    f"no trained teacher in {config.path}: training one first with the "
    f"{recipe!r} teacher recipe"
  )
  teacher_config = recipes.TEACHER_RECIPES[recipe]()
  train_and_evaluate(teacher_config, config.path, printer=printer)
