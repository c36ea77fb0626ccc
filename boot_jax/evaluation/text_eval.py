"""`evaluate --protocol text`: the CLIP score of a text-to-image student.

    python -m boot_jax.evaluate --workdir W --protocol text \
      --captions captions.txt --clip /models/clip-vit-large-patch14 \
      [--num_captions 5000] [--seed 0] [--guidance W] \
      [--reference coco_ref.npz --inception inception_fid.safetensors]

The protocol (docs/evaluation.md): the first `num_captions` distinct
captions of the file in file order (a .txt, .jsonl, .csv or .parquet file,
as prompt files); one image per caption from the student's one step, with
the noise of `sample --seed` (image i uses noise row i) and the run's
trained guidance unless `--guidance`; the images as `sample` writes them
(clipped to [-1, 1]), scored by `clip_score.ClipScorer` (uint8
quantisation, bicubic resize to CLIP's input, CLIP's normalisation):
100 x the mean of max(cos(image, caption), 0). With `--reference` (and
`--inception`), the same images also get the pixel protocol's Inception
metrics against that reference (FID, KID, precision/recall: COCO-30k FID
is `--num_captions 30000` with COCO-2014 validation captions and a
reference of its images). Image embeddings and features are taken batch
by batch, so memory holds one batch of images, never all of them.
"""

from __future__ import annotations

import numpy as np

from boot_jax.data import prompts
from boot_jax.evaluation import clip_score, pixel_eval, reference_stats
from boot_jax.runtime import paths
from boot_jax.sampling import inference, samplers

DEFAULT_CAPTIONS = 5000


class TextEvalError(ValueError):
  """A text protocol that cannot run as asked."""


def captions_of(path: str, num: int) -> list[str]:
  """The first `num` distinct captions of `path`, in file order."""
  if num < 1:
    raise TextEvalError(f"--num_captions must be >= 1, got {num}")
  captions = prompts.read_prompts(path)  # one line if it holds none
  return captions[:num]


def clip_report(
  model: inference.Model,
  params,
  captions_file: str,
  clip_dir: str,
  num: int = DEFAULT_CAPTIONS,
  seed: int = 0,
  guidance: float | None = None,
  batch_size: int = 16,
  printer=print,
  reference: str | None = None,
  inception: str | None = None,
) -> dict:
  """Samples one image per caption and scores them (see the module doc)."""
  if model.student is None or model.teacher.condition.kind != "text":
    raise TextEvalError(
      "--protocol text needs a text-to-image student (a BOOT run of a "
      "Stable Diffusion or DeepFloyd IF teacher)"
    )
  captions = captions_of(captions_file, num)
  # A bad folder fails here, before any sampling; a gs:// one is read
  # through the local cache.
  scorer = clip_score.ClipScorer(paths.local_copy(clip_dir))
  extractor = ref = None
  if reference:
    extractor, ref = reference_stats.open_reference(inception, reference)
  embeddings, feats = [], []
  n = len(captions)
  if extractor is not None and n < 2:
    raise TextEvalError(f"FID needs at least 2 captions, got {n}")

  def consume(pix):
    embeddings.append(scorer.image_embeddings(scorer.preprocess(pix)))
    if extractor is not None:
      feats.append(extractor.features(pix))

  what = "CLIP score" + (" and Inception metrics" if ref else "")
  printer(f"evaluate: {what} of {n:,} captions")
  w, rate = samplers.stream_student(
    model,
    params,
    n,
    seed,
    guidance,
    batch_size,
    samplers.Conditions(model, texts=captions),
    consume,
    printer,
  )
  image_emb = np.concatenate(embeddings)
  score = clip_score.clip_score(image_emb, scorer.text_embeddings(captions))
  extra = {}
  if extractor is not None:
    extra = dict(
      pixel_eval.metrics(np.concatenate(feats), ref),
      reference=reference,
      reference_count=int(ref["count"]),
      inception=inception,
    )
  return {
    "protocol": "text",
    "clip_score": score,
    **extra,
    "num_captions": n,
    "captions": captions_file,
    "clip": clip_dir,
    "seed": seed,
    "guidance": None if w is None else float(w),
    "images_per_s": rate,
  }
