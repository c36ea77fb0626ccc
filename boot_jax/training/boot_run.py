"""A BOOT run in a work directory: `train_and_evaluate(config, workdir)`,
what `python -m boot_jax.train` calls (boot_jax/train.py describes the
work directory it writes).

Phases: validate the config, check the work directory without writing,
take its lock, train a missing recipe teacher
(`teacher_run.ensure_teacher`), build the run (`trainer.setup`), drive it
(`loop.run_in_workdir`, resuming from the latest checkpoint), evaluate.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.config import defaults
from boot_jax.distill import conditions, refine
from boot_jax.evaluation import evaluator, pixel_eval
from boot_jax.evaluation import probe as probe_lib
from boot_jax.runtime import lock, paths, sharding
from boot_jax.runtime import workdir as workdir_lib
from boot_jax.sampling import inference
from boot_jax.training import logs, loop, teacher_run, trainer


def sample_grid_fn(
  setup: trainer.Setup, config, workdir: str, printer=lambda line: None
):
  """An `evaluate` hook: the student's one step on fixed noise, as a PNG.

  None for vector data (there is no picture to draw). `printer` gets a
  line before each part (the teacher's grid can take minutes).
  """
  if not setup.teacher.is_image:
    return None
  num = int(config.eval.get("grid_size", 64))
  eps, cond = conditions.eval_inputs(setup.teacher, num, config.eval.seed)
  # A guidance-conditioned student is drawn at eval.guidance, else at the
  # middle of its range (as `sample` draws it by default).
  w = None
  if setup.student.guided:
    w = config.eval.get("guidance")
    if w is None:
      w = sum(float(v) for v in config.boot.guidance_range) / 2
    w = float(w)
  # Every process runs the (sharded) step; the replicated result lets
  # process 0 alone write the picture.
  generate = jax.jit(
    lambda p, e, c: setup.student.generate(p, e, c, w),
    out_shardings=sharding.replicated(setup.mesh),
  )
  # eval.batch_size images per call (the last call padded: one shape), so
  # the grid never holds more activations than an evaluation batch.
  batch = max(1, min(int(config.eval.batch_size), num))

  def rows(a, start):
    if a is None:
      return None
    a = a[start : start + batch]
    pad = batch - len(a)
    return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a

  def one_step(params, e, c, n):
    return np.concatenate(
      [
        np.asarray(generate(params, rows(e, i), rows(c, i)))
        for i in range(0, n, batch)
      ]
    )[:n]

  scorer = pixel_eval.loop_scorer(config)
  if scorer is not None:
    n_scored = int(config.eval.get("inception_samples") or 256)
    scored = conditions.eval_inputs(
      setup.teacher, n_scored, config.eval.seed + 1
    )
  teacher_png = paths.join(workdir, "samples", "teacher.png")
  teacher_fn = None
  if (
    config.eval.get("teacher_grid", True)
    and not config.boot.get("guidance_range")
    and not paths.exists(teacher_png)
  ):
    # The teacher's DDIM on the grid's noise, drawn once per work directory.
    steps = max(tuple(config.eval.get("agreement_steps") or ()) or (25,))
    ts = setup.teacher.ddim_timesteps(int(steps))
    w = config.boot.get("guidance")
    teacher_fn = jax.jit(
      lambda p, e, c: setup.teacher.ddim(p, e, ts, c, w),
      out_shardings=sharding.replicated(setup.mesh),
    )

  def hook(step, state):
    nonlocal teacher_fn
    params = loop.params_for_sampling(state)
    printer(f"step {step}: the student's grid ({num} images)")
    out = one_step(params, eps, cond, num)
    scored_images = None
    if scorer is not None:  # every process samples (the step is sharded)
      scored_images = one_step(params, scored[0], scored[1], n_scored)
    teacher = None
    if teacher_fn is not None:
      printer(
        f"step {step}: the teacher's DDIM-{len(ts)} grid on the same noise "
        f"({num} images, once per work directory)"
      )
      tp = setup.teacher.params
      teacher = np.concatenate(
        [
          np.asarray(teacher_fn(tp, rows(eps, i), rows(cond, i)))
          for i in range(0, num, batch)
        ]
      )[:num]
      teacher_fn = None
    if not sharding.is_lead():
      return
    ncol = int(np.sqrt(num))
    out = setup.teacher.pixels(out, batch)
    path = paths.join(workdir, "samples", f"student_{step:07d}.png")
    images = {"samples/student": workdir_lib.save_image_grid(out, path, ncol)}
    if teacher is not None:
      images["samples/teacher"] = workdir_lib.save_image_grid(
        setup.teacher.pixels(teacher, batch), teacher_png, ncol
      )
    scalars = {}
    if scored_images is not None:  # Inception on the lead process only
      scalars = scorer(setup.teacher.pixels(scored_images, batch))
    return {"images": images, "scalars": scalars}

  return hook


def train_and_evaluate(config, workdir: str, printer=print) -> dict:
  """Runs BOOT from `config` in `workdir`; returns the final evaluation.

  Phases: config (validate, resolve the teacher) -> teacher -> student
  state (abstract first) -> restore or init -> loop -> evaluate.
  """
  config = defaults.thaw(config)  # the caller's config is never changed
  workdir_lib.resolve_teacher_path(config, workdir)
  config = defaults.freeze(config)
  # Read-only checks first, so a bad command never writes anything.
  workdir_lib.check(workdir, config, compare=False)
  with lock.WorkdirLock(workdir, enabled=sharding.is_lead()):
    return _train_locked(config, workdir, printer)


def _train_locked(config, workdir: str, printer) -> dict:
  teacher_run.ensure_teacher(config.teacher, printer)
  setup = trainer.setup(config)
  config = setup.config  # with the teacher's derived fields resolved
  workdir_lib.check(workdir, config)
  printer(
    f"teacher {setup.teacher.name} ({setup.teacher.prediction}-prediction), "
    f"student {setup.num_params:,} parameters, "
    f"grid N={setup.grid.num_steps}"
    + (
      f"; then {refine.settings(config)['steps']:,} refinement steps"
      if refine.enabled(config)
      else ""
    )
  )
  state, _ = loop.run_in_workdir(
    workdir,
    config,
    abstract_state=setup.abstract_state(),
    init_state=setup.init_state,
    step_fn=setup.step_fn,
    items=lambda st: {"state": st},
    evaluate=sample_grid_fn(
      setup,
      config,
      workdir,
      printer if sharding.is_lead() else lambda line: None,
    ),
    printer=printer,
    sync=sharding.needs_step_sync(setup.mesh),
    total_steps=refine.total_steps(config),
    probe=probe_lib.make_probe(
      setup.teacher,
      setup.student,
      setup.grid,
      setup.mesh,
      config,
      printer if sharding.is_lead() else lambda *a: None,
    ),
  )
  if setup.source_step is not None:
    printer(
      f"the student started from {refine.init_from(config)} (checkpoint "
      f"step {setup.source_step})"
    )
  if not config.eval.get("final", True):
    return {}
  if jax.process_count() > 1:
    printer(
      "multi-process run: skipping the final evaluation; run "
      f"`python -m boot_jax.evaluate --workdir {workdir}` in one process"
    )
    return {}
  model = setup.model
  if trainer.compute_dtype(config) is not None:
    # The teacher's DDIM is the reference: evaluate in float32, as
    # `python -m boot_jax.evaluate` does by default.
    printer("final evaluation: networks in float32 (the run computes in bf16)")
    model = inference.build(config, setup.mesh)
  report = evaluator.evaluate(
    model,
    loop.params_for_sampling(state),
    printer,
    pixel_eval.loop_scorer(config),
  )
  path = paths.join(workdir, "eval.json")
  workdir_lib.atomic_write(path, json.dumps(report, indent=2, sort_keys=True))
  # The final numbers in TensorBoard beside the training curves.
  tb = logs.TensorBoard(workdir)
  tb.write(int(jax.device_get(state.step)), evaluator.scalars(report))
  tb.close()
  printer(evaluator.format_report(report))
  where = f"wrote {path}"
  if setup.teacher.is_image:
    where += f"; sample grids in {paths.join(workdir, 'samples')}"
  printer(where)
  return report
