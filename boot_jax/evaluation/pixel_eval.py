"""`evaluate --protocol pixel`: Inception FID, KID and precision/recall.

    python -m boot_jax.evaluate --workdir W --protocol pixel \
      --reference ref.npz --inception inception_fid.safetensors \
      [--num_samples 50000] [--seed 0] [--guidance W]

The protocol (docs/evaluation.md): N one-step student samples with the
noise of `sample --seed` (sample i uses noise row i; class-conditional
runs cycle the labels 0, 1, ..., as `sample` does), the run's trained
guidance unless `--guidance`, the images as `sample` writes them (clipped
to [-1, 1]), quantised and fed to the FID Inception as
`fid_stats.PREPROCESSING` says; FID against the reference's moments, KID
(100 subsets of up to 1,000) and precision/recall (k = 3) against its kept
feature rows. A reference made with another extractor, weights or
preprocessing is refused.
"""

from __future__ import annotations

import numpy as np

from boot_jax.evaluation import (
  digits_classifier,
  feature_metrics,
  reference_stats,
)
from boot_jax.sampling import inference, samplers

DEFAULT_SAMPLES = 50_000


def pixel_report(
  model: inference.Model,
  params,
  reference: str,
  weights: str,
  num: int = DEFAULT_SAMPLES,
  seed: int = 0,
  guidance: float | None = None,
  batch_size: int = 50,
  printer=print,
) -> dict:
  """Samples `num` images and measures them against `reference`."""
  if model.student is None or not model.teacher.is_image:
    raise reference_stats.StatsError(
      "--protocol pixel needs an image student (a BOOT run)"
    )
  if model.teacher.condition.kind == "text":
    raise reference_stats.StatsError(
      "--protocol pixel takes no prompts: use --protocol text for a "
      "text-to-image student"
    )
  if num < 2:
    raise reference_stats.StatsError(
      f"--protocol pixel needs at least 2 samples, got --num_samples {num}"
    )
  extractor, ref = reference_stats.open_reference(weights, reference)
  feats = []
  printer(f"evaluate: Inception features of {num:,} samples")
  w, rate = samplers.stream_student(
    model,
    params,
    num,
    seed,
    guidance,
    batch_size,
    samplers.Conditions(model),
    lambda pix: feats.append(extractor.features(pix)),
    printer,
  )
  fake = np.concatenate(feats)
  real = np.asarray(ref["features"], np.float64)
  m = metrics(fake, ref)
  return {
    "protocol": "pixel",
    **m,
    "num_samples": num,
    "reference": reference,
    "reference_count": int(ref["count"]),
    "reference_rows": len(real),
    "inception": weights,
    "seed": seed,
    "guidance": None if w is None else float(w),
    "images_per_s": rate,
  }


def metrics(fake, ref: dict, k: int = 3) -> dict:
  """FID, KID and precision/recall of feature rows against `ref`
  (precision and recall only when both sets have more than k rows)."""
  real = np.asarray(ref["features"], np.float64)
  kid_mean, kid_std = feature_metrics.kid(real, fake)
  mu, sigma = digits_classifier.gaussian(fake)
  out = {
    "fid_inception": digits_classifier.frechet_distance(
      mu, sigma, ref["mu"], ref["sigma"]
    ),
    "kid": kid_mean,
    "kid_std": kid_std,
  }
  if min(len(real), len(fake)) > k:
    p, r = feature_metrics.precision_recall(real, fake, k=k)
    out |= {"precision": p, "recall": r}
  return out


def scorer(weights: str, reference: str):
  """`images -> metrics` of images in [-1, 1] against `reference`."""
  extractor, ref = reference_stats.open_reference(weights, reference)
  return lambda images: metrics(extractor.features(images), ref)


def loop_scorer(config):
  """`images -> scalars` for the training loop's evaluations, or None
  unless `eval.inception` and `eval.reference` are both set (checked and
  read once, at the start of training)."""
  weights, reference = (
    config.eval.get("inception"),
    config.eval.get("reference"),
  )
  if not weights and not reference:
    return None
  if not (weights and reference):
    raise reference_stats.StatsError(
      "eval.inception and eval.reference go together (Inception weights "
      "and fid_stats statistics)"
    )
  score = scorer(weights, reference)
  # Named for metrics.jsonl and TensorBoard.
  return lambda images: {f"eval/{k}": v for k, v in score(images).items()}
