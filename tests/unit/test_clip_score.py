"""CLIP score against transformers' PyTorch CLIPModel on a tiny folder.

The folder is written by PyTorch code (random weights, safetensors) and
read through our loader; both sides get the same preprocessed pixels and
the same token ids. Tolerance 1e-4 on the score (it is 100 x a cosine:
1e-6 on cosines of float32 networks two layers deep, scaled by 100).
"""

import numpy as np
import pytest

from boot_jax import testing
from boot_jax.evaluation import clip_score

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("clip")
  return path, testing.clip_folder(path)


def test_score_matches_pytorch(folder):
  path, model = folder
  scorer = clip_score.ClipScorer(str(path))
  rng = np.random.default_rng(0)
  images = np.tanh(rng.normal(size=(5, 48, 48, 3))).astype(np.float32)
  captions = ["a red square", "blue", "a cat", "", "a dog on a sofa"]
  pixels = scorer.preprocess(images)
  assert pixels.shape == (5, 3, 32, 32)
  ids, mask = scorer.tokenize(captions)
  with torch.no_grad():
    ref_img = model.get_image_features(pixel_values=torch.from_numpy(pixels))
    ref_txt = model.get_text_features(
      input_ids=torch.from_numpy(ids).long(),
      attention_mask=torch.from_numpy(mask).long(),
    )
  ref_img = getattr(ref_img, "pooler_output", ref_img).numpy()
  ref_txt = getattr(ref_txt, "pooler_output", ref_txt).numpy()
  img = scorer.image_embeddings(pixels)
  txt = scorer.text_embeddings(captions)
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
  assert np.abs(img - unit(ref_img)).max() <= 1e-5
  assert np.abs(txt - unit(ref_txt)).max() <= 1e-5
  ours = scorer.score(images, captions)
  cos = np.sum(unit(ref_img) * unit(ref_txt), axis=1)
  ref = 100 * np.mean(np.maximum(cos, 0))
  print(f"CLIP score {ours:.6f} vs PyTorch {ref:.6f}; cosines {cos}")
  assert abs(ours - ref) <= 1e-4
  # These random pairs all have negative cosines (the score clips them to
  # 0); with the captions' embeddings negated every term counts.
  flipped = clip_score.clip_score(img, -txt)
  ref_flipped = 100 * np.mean(np.maximum(-cos, 0))
  assert ref_flipped > 1.0
  assert abs(flipped - ref_flipped) <= 1e-4


def test_bad_inputs(folder, tmp_path):
  path, _ = folder
  scorer = clip_score.ClipScorer(str(path))
  with pytest.raises(clip_score.ClipError, match="one each"):
    scorer.score(np.zeros((2, 8, 8, 3)), ["a"])
  with pytest.raises(clip_score.ClipError, match=r"\[N, H, W, 3\]"):
    scorer.preprocess(np.zeros((2, 8, 8)))
  with pytest.raises(clip_score.ClipError, match="not a CLIP folder"):
    clip_score.ClipScorer(str(tmp_path))
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  with pytest.raises(clip_score.ClipError, match="no model.safetensors"):
    clip_score.ClipScorer(str(tmp_path))
