"""Our CLIP text encoder (models.clip_text) against transformers' PyTorch
`CLIPTextModel` and `CLIPTextModelWithProjection`, on tiny random folders
that transformers itself writes (`save_pretrained`, safetensors), read
through our own converter."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from boot_jax.models import clip_text
from boot_jax.teachers import folders

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LENGTH = 9


def _folder(tmp_path, projection, act, eos):
  cfg = transformers.CLIPTextConfig(
    vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
    num_attention_heads=4, max_position_embeddings=LENGTH, hidden_act=act,
    projection_dim=12, eos_token_id=eos, bos_token_id=0, pad_token_id=1,
  )  # fmt: skip
  torch.manual_seed(0)
  cls = (
    transformers.CLIPTextModelWithProjection
    if projection
    else transformers.CLIPTextModel
  )
  model = cls(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))  # no default 1s and 0s left
  path = tmp_path / f"{cls.__name__}_{act}_{eos}"
  model.save_pretrained(path, safe_serialization=True)
  return model, str(path)


def _ids(eos):
  """Two prompts: begin, words, end, then padding (the pad id, as SD's
  tokenizers pad; with the legacy eos id 2 the end is the highest id)."""
  ids = np.ones((2, LENGTH), np.int64)
  ids[:, 0] = 0
  ids[0, 1:4], ids[0, 4] = [5, 9, 7], eos
  ids[1, 1:7], ids[1, 7] = [3, 30, 11, 4, 8, 6], eos
  if eos == 2:  # the legacy rule reads the highest id as the end
    ids[0, 1:4], ids[1, 1:7] = [2, 2, 2], [2, 2, 2, 2, 2, 2]
    ids[0, 4], ids[1, 7] = 39, 39
  return ids


@pytest.mark.parametrize(
  "projection,act,eos",
  [(False, "quick_gelu", 2), (True, "gelu", 39)],
)
def test_clip_text_matches_pytorch(tmp_path, projection, act, eos):
  """Every output SD and SDXL read (the last state, the penultimate
  layer's, the pooled state and its projection) equals transformers',
  within 1e-5 of its scale (float32 on both sides)."""
  model, path = _folder(tmp_path, projection, act, eos)
  module = clip_text.CLIPText(model.config.to_dict(), projection=projection)
  ids = _ids(eos)
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]
  leaves = jax.tree.leaves(
    boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned)
  )
  assert leaves and all(isinstance(a, nn.Partitioned) for a in leaves)
  files = folders.weight_files(path, "model")
  params = folders.convert_by_rule(
    files, nn.meta.unbox(boxed), "text encoder", rename=clip_text.weight_key
  )
  ours = jax.jit(module.apply)({"params": params}, ids)
  with torch.no_grad():
    ref = model(torch.from_numpy(ids), output_hidden_states=True)
  pairs = [
    (ours["last_hidden_state"], ref.last_hidden_state),
    (ours["hidden_states"][-2], ref.hidden_states[-2]),
  ]
  assert len(ours["hidden_states"]) == len(ref.hidden_states)
  if projection:
    pairs.append((ours["text_embeds"], ref.text_embeds))
  else:
    pairs.append((ours["pooled"], ref.pooler_output))
  for a, b in pairs:
    b = b.numpy()
    assert a.shape == b.shape
    assert np.abs(np.asarray(a) - b).max() <= 1e-5 * np.abs(b).max()


def test_unsupported_activation_is_refused_in_one_line():
  cfg = dict(
    vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
    num_attention_heads=4, hidden_act="relu",
  )  # fmt: skip
  with pytest.raises(clip_text.CLIPConfigError, match="hidden_act") as e:
    jax.eval_shape(
      clip_text.CLIPText(cfg).init, jax.random.key(0), np.ones((1, 4), int)
    )
  assert "\n" not in str(e.value)


def test_keys_without_the_base_model_prefix_load_the_same(tmp_path):
  """transformers 5 saves a `CLIPTextModel` without the `text_model.`
  prefix that transformers 4 wrote: both folders load to the same
  parameters."""
  st = pytest.importorskip("safetensors.torch")
  model, path = _folder(tmp_path, False, "quick_gelu", 2)
  module = clip_text.CLIPText(model.config.to_dict())
  ids = _ids(2)
  abstract = nn.meta.unbox(
    jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]
  )
  state = model.state_dict()
  prefixed = {
    (k if k.startswith("text_model.") else f"text_model.{k}"): v.contiguous()
    for k, v in state.items()
  }
  bare = {k.removeprefix("text_model."): v for k, v in prefixed.items()}
  loaded = []
  for name, tensors in (("v4", prefixed), ("v5", bare)):
    file = tmp_path / f"{name}.safetensors"
    st.save_file(tensors, str(file))
    loaded.append(
      folders.convert_by_rule(
        [str(file)], abstract, "text encoder", rename=clip_text.weight_key
      )
    )
  for a, b in zip(*(jax.tree.leaves(p) for p in loaded), strict=True):
    np.testing.assert_array_equal(a, b)
