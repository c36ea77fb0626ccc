"""Data-free inputs: noise, class labels and time-grid indices.

Nothing here reads data. Every example's randomness is drawn from
`fold_in(fold_in(key, step), global_index)`, so the inputs of a given seed
and step do not depend on the batch layout, the mesh or the number of
processes that draw them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from boot_jax.distill import boot
from boot_jax.teachers import base


def _example_keys(key, step, indices):
  step_key = jax.random.fold_in(key, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(indices)


def draw_noise(key, step, indices, sample_shape):
  """`eps [len(indices), *sample_shape]`, one key per global index."""
  keys = _example_keys(key, step, indices)
  return jax.vmap(lambda k: jax.random.normal(k, tuple(sample_shape)))(keys)


def draw_labels(key, num_classes: int, label_logits=None):
  """A label per key: uniform, or from `label_logits` (log frequencies)."""
  if label_logits is None:
    return jax.random.randint(key, (), 0, num_classes)
  return jax.random.categorical(key, label_logits)


def draw_batch(
  key,
  step,
  indices,
  sample_shape,
  condition: base.ConditionSpec,
  grid: boot.Grid,
  label_logits=None,
  guidance_range=None,
  time_sampling: str = "uniform",
):
  """The BOOT inputs of one step for the given global example indices.

  Args:
    key, step, indices: the run's data key, the step, the examples' global
      indices.
    sample_shape, condition, grid: what to draw.
    label_logits: log frequencies of the labels (None: uniform).
    guidance_range: `(w_min, w_max)`: each example also gets a guidance
      scale `w` uniform in the range (a guidance-conditioned student).
    time_sampling: how the grid step is drawn (`defaults.TIME_SAMPLINGS`).

  Returns:
    A dict with `eps`, `cond` (labels or None), the time inputs of
    `boot.time_inputs`, and `w` with a guidance range.
  """
  keys = _example_keys(key, step, indices)
  split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  k_eps, k_time, k_label = split[:, 0], split[:, 1], split[:, 2]
  eps = jax.vmap(lambda k: jax.random.normal(k, tuple(sample_shape)))(k_eps)
  if time_sampling == "clean":
    logits = -jnp.log(jnp.arange(1, grid.num_steps + 1, dtype=jnp.float32))
    idx = 1 + jax.vmap(lambda k: jax.random.categorical(k, logits))(k_time)
  else:
    idx = jax.vmap(lambda k: jax.random.randint(k, (), 1, grid.num_steps + 1))(
      k_time
    )
  batch = dict(eps=eps, cond=None, **boot.time_inputs(grid, idx))
  if condition.kind == "class":
    batch["cond"] = jax.vmap(
      lambda k: draw_labels(k, condition.num_classes, label_logits)
    )(k_label).astype(jnp.int32)
  # Text conditions (prompt embeddings) are looked up on the host from the
  # prompt source by the caller (`loop.setup`), as they live on disk.
  if guidance_range is not None:
    lo, hi = guidance_range
    # A key of its own, so runs without a range keep their random stream.
    k_w = jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys)
    batch["w"] = jax.vmap(
      lambda k: jax.random.uniform(k, (), jnp.float32, lo, hi)
    )(k_w)
  return batch


def eval_inputs(teacher, num: int, seed: int):
  """Fixed evaluation noise (and uniform labels for conditional teachers)."""
  key = jax.random.key(seed)
  eps = draw_noise(key, 0, jnp.arange(num), tuple(teacher.sample_shape))
  cond = None
  if teacher.condition.kind == "class":
    cond = jax.random.randint(
      jax.random.fold_in(key, 1), (num,), 0, teacher.condition.num_classes
    )
  elif teacher.condition.kind == "text":
    # The training prompts in file order, cycled.
    prompt_set = teacher.prompts()
    if prompt_set is None:
      cond = teacher.null_condition(num)
    else:
      cond = jnp.asarray(prompt_set.cycled(num))
  return eps, cond
