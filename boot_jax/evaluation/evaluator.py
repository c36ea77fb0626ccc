"""The default evaluation of a run: the student against the teacher's
DDIM and the data (`evaluate`, `format_report`), what `python -m
boot_jax.evaluate` and the end of a training run report.

`REPORTS` maps a teacher's `evaluation` kind to its report: `images`
(agreement with the teacher's DDIM, Frechet distances in a digits
classifier's features, images/s; boot_jax/evaluate.py lists them) and
`mixture` (the analytic mixture's exact evaluation, `mixture_eval`).
"""

from __future__ import annotations

import math
import time

import numpy as np

from boot_jax.distill import conditions
from boot_jax.evaluation import digits_classifier, mixture_eval
from boot_jax.sampling import samplers


def image_report(model, params, printer=print, scorer=None) -> dict:
  """Agreement, Frechet distances and speed for a pixel teacher;
  `scorer(images) -> dict` adds its entries to each sampler's."""
  config = model.config
  ev = config.eval
  num = int(ev.num_samples)
  batch = samplers.batch_for(model, num, int(ev.batch_size), strict=False)
  teacher = model.teacher
  kind = "student" if model.student is not None else "teacher"
  guidance = samplers.resolve_guidance(model, ev.get("guidance"), kind)
  eps, cond = conditions.eval_inputs(teacher, num, ev.seed)

  def run(kind, steps=0):
    what = kind if kind == "student" else f"{kind} ({steps} steps)"
    t0 = time.perf_counter()
    fn = samplers.make_sampler(model, params, kind, steps, guidance)
    fn = samplers.jit_on_mesh(model, fn)
    out, rate = samplers.run_sampler(fn, eps, cond, batch)
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
    net = digits_classifier.train_classifier(reference, printer=printer)
    real_mu, real_cov = digits_classifier.gaussian(
      net.features(reference.images)
    )
    report["classifier_accuracy"] = net.accuracy
    train_split, hold = reference.split(0.2, 0)
    report["fid_real_holdout_vs_train"] = digits_classifier.frechet_distance(
      *digits_classifier.gaussian(net.features(hold.images)),
      *digits_classifier.gaussian(net.features(train_split.images)),
    )
  for name, (out, rate) in rows.items():
    entry = dict(images_per_s=rate)
    if reference is not None:
      logits, feats = net.logits_and_features(out)
      entry["fid"] = digits_classifier.frechet_distance(
        real_mu, real_cov, *digits_classifier.gaussian(feats)
      )
      if cond is not None:
        entry["class_accuracy"] = float(
          np.mean(np.argmax(logits, -1) == np.asarray(cond))
        )
    if scorer is not None:
      printer(f"evaluate: Inception metrics of {name}")
      entry.update(scorer(out))
    report["samplers"][name] = entry
  return report


def mixture_report(model, params, printer=print, scorer=None) -> dict:
  """`gmm_report` at the run's guidance (or at each of several w)."""
  config = model.config
  ev = config.eval
  if scorer is not None:
    raise ValueError("Inception metrics need images, not a mixture run")
  if model.student is None:
    raise ValueError("the mixture evaluation needs a student")

  def report(w):
    printer(f"evaluate: mixture agreement and MMD on {ev.num_samples} samples")
    return mixture_eval.gmm_report(
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


def evaluate(model, params, printer=print, scorer=None) -> dict:
  """The evaluation the teacher's family asks for (`Teacher.evaluation`);
  `scorer` (`pixel_eval.loop_scorer`) adds Inception metrics to images."""
  return REPORTS[model.teacher.evaluation](model, params, printer, scorer)


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
  has_inc = any("fid_inception" in e for e in report["samplers"].values())
  if has_cls:
    header += f" {'class acc':>10}"
  if has_inc:
    header += f" {'Inc. FID':>10}"
  lines += [header, "-" * len(header)]
  for name, e in report["samplers"].items():
    row = f"{name:<38} {e.get('fid', float('nan')):>9.3f} "
    row += f"{e['images_per_s']:>11.1f}"
    if has_cls:
      row += f" {e.get('class_accuracy', float('nan')):>10.3f}"
    if has_inc:
      row += f" {e.get('fid_inception', float('nan')):>10.3f}"
    lines.append(row)
  return "\n".join(lines)


def scalars(report: dict, prefix: str = "eval/") -> dict[str, float]:
  """The report's numbers as flat `prefix/a/b` scalars (for metrics.jsonl
  and TensorBoard); text, lists and non-finite values are left out."""
  out = {}
  for key, value in report.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(scalars(value, name + "/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      if math.isfinite(value):
        out[name] = float(value)
  return out
