"""The optax chain: global-norm clipping, then AdamW with warmup."""

from __future__ import annotations

import optax

LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config, total_steps: int):
  """Linear warmup to `config.lr`, then constant or cosine decay."""
  warmup = int(config.warmup_steps)
  if config.schedule == "constant":
    if warmup <= 0:
      return config.lr
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, config.lr, warmup),
        optax.constant_schedule(config.lr),
      ],
      [warmup],
    )
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0,
      config.lr,
      warmup_steps=max(warmup, 1),
      decay_steps=max(total_steps, warmup + 1),
      end_value=config.lr * config.get("final_lr_fraction", 0.0),
    )
  raise ValueError(
    f"unknown optim.schedule {config.schedule!r}; expected {LR_SCHEDULES}"
  )


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup and global-norm gradient clipping.

  Args:
    config: the `optim` section (`lr`, `warmup_steps`, `schedule`, `b1`,
      `b2`, `eps`, `weight_decay`, `grad_clip`).
    total_steps: the run's length (for decaying schedules).
  """
  if config.lr <= 0:
    raise ValueError(f"optim.lr must be positive, got {config.lr}")
  parts = []
  if config.grad_clip and config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(
    optax.adamw(
      learning_rate(config, total_steps),
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
    )
  )
  return optax.chain(*parts)
