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

from boot_jax import clip_score, inference, paths, prompts, sample

DEFAULT_CAPTIONS = 5000


class TextEvalError(ValueError):
  """A text protocol that cannot run as asked."""


def captions_of(path: str, num: int) -> list[str]:
  """The first `num` distinct captions of `path`, in file order."""
  if num < 1:
    raise TextEvalError(f"--num_captions must be >= 1, got {num}")
  captions = prompts.read_prompts(path)  # one line if it holds none
  return captions[:num]


def stream_student(
  model, params, num, seed, guidance, batch_size, conds, consume, printer
):
  """One-step student images for examples 0..num-1 (noise row i of
  `sample --seed`, `conds`' condition i), handed to `consume(pixels)`
  batch by batch as `sample` writes them. Returns `(w, images/s)`."""
  w = sample.resolve_guidance(model, guidance, "student", False)
  fn = sample.jit_on_mesh(
    model, sample.make_sampler(model, params, "student", 1, w)
  )
  shape = tuple(model.teacher.sample_shape)
  batch = sample.batch_for(model, num, batch_size, strict=False)
  rate = sample.stream(
    fn,
    lambda s, k: inference.noise(shape, k, seed, s),
    conds.rows,
    num,
    batch,
    lambda s, e, smp, pix: consume(pix),
    lambda smp: model.teacher.pixels(smp, batch),
    progress=lambda done, total: printer(
      f"evaluate: {done:,}/{total:,} images"
    ),
  )
  return w, rate


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
    from boot_jax import fid_stats  # noqa: PLC0415

    extractor, ref = fid_stats.open_reference(inception, reference)
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
  w, rate = stream_student(
    model,
    params,
    n,
    seed,
    guidance,
    batch_size,
    sample.Conditions(model, texts=captions),
    consume,
    printer,
  )
  image_emb = np.concatenate(embeddings)
  score = clip_score.clip_score(image_emb, scorer.text_embeddings(captions))
  extra = {}
  if extractor is not None:
    from boot_jax import pixel_eval  # noqa: PLC0415

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


def define_flags() -> dict:
  """The flags of `evaluate --protocol text` and `--protocol pixel`."""
  from absl import flags  # noqa: PLC0415

  return dict(
    protocol=flags.DEFINE_enum(
      "protocol",
      "default",
      ["default", "text", "pixel"],
      "default: the report of the run's kind (digits, mixture, agreement); "
      "text: the CLIP score over --captions, and Inception metrics with "
      "--reference (writes W/eval_text.json); "
      "pixel: Inception FID, KID and precision/recall against --reference "
      "(writes W/eval_pixel.json).",
    ),
    captions=flags.DEFINE_string(
      "captions", None, "Caption file of --protocol text (txt/jsonl/csv)."
    ),
    clip=flags.DEFINE_string(
      "clip", None, "A local CLIP folder (transformers) for --protocol text."
    ),
    num_captions=flags.DEFINE_integer(
      "num_captions", DEFAULT_CAPTIONS, "Captions scored (the first ones)."
    ),
    reference=flags.DEFINE_string(
      "reference",
      None,
      "Reference statistics (fid_stats --out): needed by --protocol pixel, "
      "optional for text (adds FID, KID, precision/recall).",
    ),
    inception=flags.DEFINE_string(
      "inception", None, "FID Inception weights (.safetensors)."
    ),
    seed=flags.DEFINE_integer("seed", 0, "Noise seed (as sample --seed)."),
    guidance=flags.DEFINE_float(
      "guidance", None, "Guidance w (default: the run's trained w)."
    ),
  )


NEEDS = {"text": ("captions", "clip"), "pixel": ("reference", "inception")}


def check_flags(f) -> None:
  """Refuses a protocol without its inputs, before loading anything."""
  protocol = f["protocol"].value
  needs = list(NEEDS.get(protocol, ()))
  if f["reference"].value or f["inception"].value:
    needs += ["reference", "inception"]  # Inception metrics: both or neither
  for name in needs:
    if not f[name].value:
      raise TextEvalError(f"--protocol {protocol} needs --{name}")
  if f["num_captions"].value < 1:
    raise TextEvalError(
      f"--num_captions must be >= 1, got {f['num_captions'].value}"
    )


def default_scorer(f):
  """Inception metrics for each sampler of `--protocol default`, or None
  without `--inception`/`--reference`."""
  if not f["reference"].value:
    return None
  from boot_jax import pixel_eval  # noqa: PLC0415

  return pixel_eval.scorer(f["inception"].value, f["reference"].value)


def protocol_report(f, model, params, printer=print) -> dict:
  """The report of `--protocol text` or `pixel` (see their modules)."""
  if f["protocol"].value == "text":
    return clip_report(
      model,
      params,
      f["captions"].value,
      f["clip"].value,
      f["num_captions"].value,
      f["seed"].value,
      f["guidance"].value,
      printer=printer,
      reference=f["reference"].value,
      inception=f["inception"].value,
    )
  from boot_jax import pixel_eval  # noqa: PLC0415

  num = f["num_samples"].value or pixel_eval.DEFAULT_SAMPLES
  return pixel_eval.pixel_report(
    model,
    params,
    f["reference"].value,
    f["inception"].value,
    num,
    f["seed"].value,
    f["guidance"].value,
    printer=printer,
  )
