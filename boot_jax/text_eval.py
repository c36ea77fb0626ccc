"""`evaluate --protocol text`: the CLIP score of a text-to-image student.

    python -m boot_jax.evaluate --workdir W --protocol text \
      --captions captions.txt --clip /models/clip-vit-large-patch14 \
      [--num_captions 5000] [--seed 0] [--guidance W]

The protocol (docs/evaluation.md): the first `num_captions` distinct
captions of the file in file order (a .txt, .jsonl, .csv or .parquet file,
as prompt files); one image per caption from the student's one step, with
the noise of `sample --seed` (image i uses noise row i) and the run's
trained guidance unless `--guidance`; the images as `sample` writes them
(clipped to [-1, 1]), scored by `clip_score.ClipScorer` (uint8
quantisation, bicubic resize to CLIP's input, CLIP's normalisation):
100 x the mean of max(cos(image, caption), 0). Image embeddings are taken
batch by batch, so memory holds one batch of images, never all of them.
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
) -> dict:
  """Samples one image per caption and scores them (see the module doc)."""
  if model.student is None or model.teacher.condition.kind != "text":
    raise TextEvalError(
      "--protocol text needs a text-to-image student (a BOOT run of a "
      "Stable Diffusion teacher)"
    )
  captions = captions_of(captions_file, num)
  # A bad folder fails here, before any sampling; a gs:// one is read
  # through the local cache.
  scorer = clip_score.ClipScorer(paths.local_copy(clip_dir))
  w = sample.resolve_guidance(model, guidance, "student", False)
  fn = sample.jit_on_mesh(
    model, sample.make_sampler(model, params, "student", 1, w)
  )
  shape = tuple(model.teacher.sample_shape)
  n = len(captions)
  batch = sample.batch_for(model, n, batch_size, strict=False)
  conds = sample.Conditions(model, texts=captions)
  embeddings = []
  printer(f"evaluate: CLIP score of {n:,} captions (batch {batch})")
  rate = sample.stream(
    fn,
    lambda s, k: inference.noise(shape, k, seed, s),
    conds.rows,
    n,
    batch,
    lambda s, e, smp, pix: embeddings.append(
      scorer.image_embeddings(scorer.preprocess(pix))
    ),
    lambda smp: model.teacher.pixels(smp, batch),
    progress=lambda done, total: printer(
      f"evaluate: {done:,}/{total:,} images"
    ),
  )
  image_emb = np.concatenate(embeddings)
  score = clip_score.clip_score(image_emb, scorer.text_embeddings(captions))
  return {
    "protocol": "text",
    "clip_score": score,
    "num_captions": n,
    "captions": captions_file,
    "clip": clip_dir,
    "seed": seed,
    "guidance": None if w is None else float(w),
    "images_per_s": rate,
  }


def define_flags() -> dict:
  """The flags of `evaluate --protocol text`."""
  from absl import flags  # noqa: PLC0415

  return dict(
    protocol=flags.DEFINE_enum(
      "protocol",
      "default",
      ["default", "text"],
      "default: the report of the run's kind (digits, mixture, agreement); "
      "text: the CLIP score over --captions (writes W/eval_text.json).",
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
    seed=flags.DEFINE_integer("seed", 0, "Noise seed (as sample --seed)."),
    guidance=flags.DEFINE_float(
      "guidance", None, "Guidance w (default: the run's trained w)."
    ),
  )


def check_flags(f) -> None:
  """Refuses a text protocol without its inputs, before loading anything."""
  if f["protocol"].value != "text":
    return
  for name in ("captions", "clip"):
    if not f[name].value:
      raise TextEvalError(f"--protocol text needs --{name}")
  if f["num_captions"].value < 1:
    raise TextEvalError(
      f"--num_captions must be >= 1, got {f['num_captions'].value}"
    )
