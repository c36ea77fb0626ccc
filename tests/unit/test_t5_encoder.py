"""Our T5 encoder (models.t5_encoder) against transformers' PyTorch
`T5EncoderModel`, on tiny random folders that transformers itself writes
(`save_pretrained`, safetensors), read through our own converter."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from boot_jax.models import t5_encoder
from boot_jax.teachers import folders

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("proj", ["gated-gelu", "relu"])
def test_t5_encoder_matches_pytorch(tmp_path, proj):
  """The last hidden state equals transformers', padding masked out,
  within 1e-5 of its scale (float32 on both sides), on sequences long
  enough (40 tokens, 8 buckets up to distance 20) to use every kind of
  position bucket."""
  cfg = transformers.T5Config(
    vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=3, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=20,
    feed_forward_proj=proj, dropout_rate=0.0,
  )  # fmt: skip
  torch.manual_seed(0)
  model = transformers.T5EncoderModel(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))  # no default 1s left
  path = tmp_path / proj
  model.save_pretrained(path, safe_serialization=True)
  module = t5_encoder.T5Encoder(model.config.to_dict())
  rng = np.random.default_rng(0)
  ids = rng.integers(2, 50, (2, 40))
  mask = np.ones_like(ids)
  mask[1, 25:] = 0  # the second prompt is padded
  ids[1, 25:] = 0
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, mask))
  boxed = boxed["params"]
  leaves = jax.tree.leaves(
    boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned)
  )
  assert leaves and all(isinstance(a, nn.Partitioned) for a in leaves)
  params = folders.convert_by_rule(
    folders.weight_files(str(path), "model"),
    nn.meta.unbox(boxed),
    "text encoder",
    rename=t5_encoder.weight_key,
  )
  ours = np.asarray(jax.jit(module.apply)({"params": params}, ids, mask))
  with torch.no_grad():
    ref = model(
      input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
    ).last_hidden_state.numpy()
  assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_relative_buckets_match_transformers():
  """Every (query, key) bucket over 300 positions, against transformers'
  own bucket function."""
  t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
  for buckets, distance in ((32, 128), (8, 20)):
    ref = t5.T5Attention._relative_position_bucket(
      rel, bidirectional=True, num_buckets=buckets, max_distance=distance
    ).numpy()
    ours = t5_encoder.relative_buckets(300, buckets, distance)
    np.testing.assert_array_equal(ours, ref)


def test_unsupported_feed_forward_is_refused_in_one_line():
  cfg = dict(
    vocab_size=10, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=4,
    feed_forward_proj="gated-silu",
  )  # fmt: skip
  with pytest.raises(t5_encoder.T5ConfigError, match="feed_forward_proj") as e:
    jax.eval_shape(
      t5_encoder.T5Encoder(cfg).init, jax.random.key(0), np.ones((1, 4), int)
    )
  assert "\n" not in str(e.value)
