r"""Evaluation: the student against the teacher's DDIM and the data.

    python -m boot_jax.evaluate --workdir W [--mesh data=D,...] \
      [--dtype float32|bfloat16]

writes W/eval.json and prints a table. Runs on this machine's devices,
whatever mesh trained the run (see `boot_jax.inference`); the networks run
in float32 unless `--dtype bfloat16`. On a teacher work directory only the
teacher's samplers are evaluated.

* Analytic mixture: the student's one step `g(eps, clean)` against the
  teacher's DDIM over the training grid from the same eps (component
  agreement, MSE) and against exact mixture samples (kernel MMD).
* Pixel teachers: agreement of the student with the teacher's DDIM 10, 25
  and 50 steps on the same eps (MSE, PSNR); Frechet distances in the
  feature space of a small classifier trained on the same data (its
  held-out accuracy reported) from the real data to the student's one step,
  the teacher's DDIM 1, 2, 4, 10, 50 steps and the hybrid sampler; and
  the images/s of each (same batch, after compilation).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from boot_jax import (
  boot,
  checkpoint,
  cli,
  conditions,
  fid,
  inference,
  paths,
  sample,
  text_eval,
)
from boot_jax import workdir as workdir_lib
from boot_jax.teachers import gmm

# Kernel widths of the MMD, as fractions of the median squared pairwise
# distance of the reference samples: one wide kernel sees the component
# weights, the narrow ones the shape of each component.
MMD_SCALES = (0.01, 0.1, 1.0)


def eval_inputs(teacher, num: int, seed: int):
  """Fixed evaluation noise (and uniform labels for conditional teachers)."""
  key = jax.random.key(seed)
  eps = conditions.draw_noise(
    key, 0, jnp.arange(num), tuple(teacher.sample_shape)
  )
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


def teacher_ddim(teacher, grid: boot.Grid, eps, cond, guidance, batch_size):
  """The teacher's DDIM-N on the grid's model-call times from `eps`."""
  ts = grid.ddim_timesteps()
  fn = jax.jit(lambda e, c: teacher.ddim(teacher.params, e, ts, c, guidance))
  return sample.run_sampler(fn, eps, cond, batch_size)[0]


def student_one_step(student, params, eps, cond, batch_size, guidance=None):
  """The student's one step; `guidance` is read by guided students only."""
  w = guidance if student.guided else None
  fn = jax.jit(lambda e, c: student.generate(params, e, c, w))
  return sample.run_sampler(fn, eps, cond, batch_size)[0]


def mmd(x, y, scales=MMD_SCALES, bandwidth=None):
  """Biased (V-statistic) kernel MMD with a sum of Gaussian kernels.

  The biased estimator is always >= 0 and its sampling floor is positive,
  so ratios of MMDs stay meaningful for two good samplers.

  Args:
    x, y: `[n, D]`, `[m, D]` samples.
    scales: kernel variances as fractions of `bandwidth`.
    bandwidth: reference squared distance (default: median over `y`).

  Returns:
    `(mmd, bandwidth)`; mmd is the square root of the MMD^2 estimate.
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if bandwidth is None:
    d = _sqdist(y[:1000], y[:1000])
    bandwidth = float(jnp.median(d[jnp.triu_indices(d.shape[0], 1)]))
  val = _mmd2(x, y, jnp.asarray(scales) * bandwidth)
  return float(jnp.sqrt(jnp.maximum(val, 0.0))), bandwidth


def _sqdist(a, b):
  return (
    jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2 * a @ b.T
  ).clip(0.0)


@jax.jit
def _mmd2(x, y, widths):
  def k(a, b):
    d = _sqdist(a, b)
    return jnp.mean(jnp.sum(jnp.exp(-d[..., None] / widths), -1))

  return k(x, x) + k(y, y) - 2 * k(x, y)


def gmm_report(
  teacher,
  student,
  params,
  grid: boot.Grid,
  guidance=None,
  num: int = 4000,
  seed: int = 12345,
  batch_size: int = 1000,
):
  """Student one-step vs teacher DDIM-N on `num` fresh eps, and vs data.

  Returns a dict with:
    agreement: fraction of eps whose two outputs share a component.
    mse: mean squared error per coordinate between the two outputs.
    mse_over_var: mse over the data's per-coordinate variance.
    weight_error: max |student component frequency - mixture weight|
      (unconditional teachers).
    mmd_student, mmd_teacher: MMD of each to exact mixture samples, and
    mmd_ratio: their ratio (unconditional teachers).
  """
  eps, cond = eval_inputs(teacher, num, seed)
  ref = teacher_ddim(teacher, grid, eps, cond, guidance, batch_size)
  out = student_one_step(student, params, eps, cond, batch_size, guidance)
  p = teacher.params
  comp_ref = np.asarray(gmm.assign(p, jnp.asarray(ref)))
  comp_out = np.asarray(gmm.assign(p, jnp.asarray(out)))
  data_var = _data_variance(p)
  mse = float(np.mean((out - ref) ** 2))
  report = dict(
    agreement=float(np.mean(comp_ref == comp_out)),
    mse=mse,
    mse_over_var=mse / data_var,
    num_eval=int(num),
    num_grid_steps=int(grid.num_steps),
  )
  if teacher.condition.kind == "none":
    weights = np.exp(np.asarray(p["log_weights"], np.float64))
    freq = np.bincount(comp_out, minlength=len(weights)) / num
    true, _ = gmm.sample(p, jax.random.key(seed + 1), num)
    m_student, bw = mmd(out, true)
    m_teacher, _ = mmd(ref, true, bandwidth=bw)
    report.update(
      weight_error=float(np.max(np.abs(freq - weights))),
      mmd_student=m_student,
      mmd_teacher=m_teacher,
      mmd_ratio=m_student / m_teacher,
    )
  return report


def _data_variance(params) -> float:
  """Per-coordinate variance of the mixture, averaged over coordinates."""
  mu = np.asarray(params["means"], np.float64)
  s = np.asarray(params["stds"], np.float64)
  w = np.exp(np.asarray(params["log_weights"], np.float64))
  mean = w @ mu
  second = w @ (mu**2) + w @ (s**2)
  return float(np.mean(second - mean**2))


def image_report(model, params, printer=print) -> dict:
  """Agreement, Frechet distances and speed for a pixel teacher."""
  config = model.config
  ev = config.eval
  num = int(ev.num_samples)
  batch = sample.batch_for(model, num, int(ev.batch_size), strict=False)
  teacher = model.teacher
  kind = "student" if model.student is not None else "teacher"
  guidance = sample.resolve_guidance(model, ev.get("guidance"), kind)
  eps, cond = eval_inputs(teacher, num, ev.seed)

  def run(kind, steps=0):
    what = kind if kind == "student" else f"{kind} ({steps} steps)"
    t0 = time.perf_counter()
    fn = sample.make_sampler(model, params, kind, steps, guidance)
    fn = sample.jit_on_mesh(model, fn)
    out, rate = sample.run_sampler(fn, eps, cond, batch)
    out = teacher.pixels(out, batch)
    printer(
      f"evaluate: {what}: {num} samples in {time.perf_counter() - t0:.1f} s"
    )
    return out, rate

  rows = {}
  agreement = {}
  if model.student is not None:
    student, student_rate = run("student")
    rows["student 1 step"] = (student, student_rate)
  ddim_steps = sorted(set(ev.ddim_steps) | set(ev.agreement_steps))
  for k in ddim_steps:
    out, rate = run("teacher", k)
    rows[f"teacher DDIM {k}"] = (out, rate)
    if k in ev.agreement_steps and model.student is not None:
      mse = float(np.mean((student - out) ** 2))
      agreement[str(k)] = dict(mse=mse, psnr=float(10 * np.log10(4.0 / mse)))
  if model.student is not None:
    for k in ev.hybrid_steps:
      rows[f"hybrid (student + {k} teacher steps)"] = run("hybrid", k)

  report = dict(num_samples=num, agreement=agreement, samplers={})
  if model.grid is not None:
    report["grid_steps"] = int(model.grid.num_steps)
  if guidance is not None:
    report["guidance"] = float(guidance)
  reference = teacher.reference_data()
  if reference is not None:
    printer("evaluate: training the feature classifier for Frechet distances")
    net = fid.train_classifier(reference, printer=printer)
    real_mu, real_cov = fid.gaussian(net.features(reference.images))
    report["classifier_accuracy"] = net.accuracy
    train_split, hold = reference.split(0.2, 0)
    report["fid_real_holdout_vs_train"] = fid.frechet_distance(
      *fid.gaussian(net.features(hold.images)),
      *fid.gaussian(net.features(train_split.images)),
    )
  for name, (out, rate) in rows.items():
    entry = dict(images_per_s=rate)
    if reference is not None:
      logits, feats = net.logits_and_features(out)
      entry["fid"] = fid.frechet_distance(
        real_mu, real_cov, *fid.gaussian(feats)
      )
      if cond is not None:
        entry["class_accuracy"] = float(
          np.mean(np.argmax(logits, -1) == np.asarray(cond))
        )
    report["samplers"][name] = entry
  return report


def mixture_report(model, params, printer=print) -> dict:
  """`gmm_report` at the run's guidance (or at each of several w)."""
  config = model.config
  ev = config.eval
  if model.student is None:
    raise ValueError("the mixture evaluation needs a student")

  def report(w):
    printer(f"evaluate: mixture agreement and MMD on {ev.num_samples} samples")
    return gmm_report(
      model.teacher,
      model.student,
      params,
      model.grid,
      w,
      num=ev.num_samples,
      seed=ev.seed,
      batch_size=ev.batch_size,
    )

  if not model.guided:
    return report(config.boot.get("guidance"))
  # A guidance-conditioned student: each scale against the teacher's
  # DDIM guided with the same w.
  out = {}
  for w in guidance_scales(config):
    out.update({f"{k}@w={w:g}": v for k, v in report(w).items()})
  return out


# `Teacher.evaluation` -> the report it asks for.
REPORTS = {"images": image_report, "mixture": mixture_report}


def evaluate(model, params, printer=print) -> dict:
  """The evaluation the teacher's family asks for (`Teacher.evaluation`)."""
  return REPORTS[model.teacher.evaluation](model, params, printer)


def guidance_scales(config) -> tuple[float, ...]:
  """The w a guidance-conditioned student is evaluated at.

  `eval.guidance_scales` when set, else the range's ends and middle.
  """
  scales = config.eval.get("guidance_scales")
  if scales:
    return tuple(float(w) for w in scales)
  lo, hi = (float(w) for w in config.boot.guidance_range)
  return (lo, (lo + hi) / 2, hi)


def format_report(report: dict) -> str:
  """A plain-text table of an evaluation report."""
  if "samplers" not in report:
    return "\n".join(
      f"{k:>16}: {v:.6g}" if isinstance(v, float | int) else f"{k:>16}: {v}"
      for k, v in sorted(report.items())
    )
  lines = []
  if "classifier_accuracy" in report:
    lines.append(
      f"FID classifier held-out accuracy: {report['classifier_accuracy']:.4f}; "
      f"FID real holdout vs train: {report['fid_real_holdout_vs_train']:.3f}"
    )
  for k, v in report["agreement"].items():
    lines.append(
      f"student vs teacher DDIM {k}: MSE {v['mse']:.5f}, "
      f"PSNR {v['psnr']:.2f} dB"
    )
  header = f"{'sampler':<38} {'FID':>9} {'images/s':>11}"
  has_cls = any("class_accuracy" in e for e in report["samplers"].values())
  if has_cls:
    header += f" {'class acc':>10}"
  lines += [header, "-" * len(header)]
  for name, e in report["samplers"].items():
    row = f"{name:<38} {e.get('fid', float('nan')):>9.3f} "
    row += f"{e['images_per_s']:>11.1f}"
    if has_cls:
      row += f" {e.get('class_accuracy', float('nan')):>10.3f}"
    lines.append(row)
  return "\n".join(lines)


def define_flags():
  """The CLI's flags (defined only when run as a program)."""
  return dict(
    workdir=flags.DEFINE_string("workdir", None, "A work directory."),
    **inference.define_flags(),
    num_samples=flags.DEFINE_integer(
      "num_samples", None, "Samples per sampler (default: eval.num_samples)."
    ),
    **text_eval.define_flags(),
  )


def main(argv, f):
  cli.check_args(argv, f, "workdir")
  workdir = f["workdir"].value
  try:
    text_eval.check_flags(f)
    protocol = f["protocol"].value
    name = "eval.json" if protocol == "default" else f"eval_{protocol}.json"
    path = paths.join(workdir, name)
    # Refuse up front what could not be written at the end.
    if not paths.is_remote(workdir):
      if os.path.isdir(workdir) and not os.access(workdir, os.W_OK):
        raise OSError(f"cannot write {path}: {workdir} is read-only")
    else:
      paths.check_writable(workdir)
    mesh = inference.mesh_from_spec(f["mesh"].value)
    model, params, step = inference.load(workdir, mesh, f["dtype"].value)
    cli.printer(f"evaluate: loaded {workdir} (checkpoint step {step})")
    if f["num_samples"].value is not None:
      if f["num_samples"].value < 1:
        raise ValueError(
          f"--num_samples must be >= 1, got {f['num_samples'].value}"
        )
      model.config.eval.num_samples = f["num_samples"].value
    if protocol != "default":
      report = text_eval.protocol_report(f, model, params, cli.printer)
    else:
      report = evaluate(model, params, printer=cli.printer)
    report["checkpoint_step"] = step
    workdir_lib.atomic_write(path, json.dumps(report, indent=2, sort_keys=True))
    cli.printer(format_report(report))
    cli.printer(f"wrote {path}")
  except (ValueError, OSError, checkpoint.CheckpointError) as e:
    cli.fail(e, code=1)


if __name__ == "__main__":
  _flags = define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
