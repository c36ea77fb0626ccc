"""Our SD3 transformer (models/mmdit.py) against diffusers' PyTorch
`SD3Transformer2DModel`.

A tiny random transformer is written by diffusers' `save_pretrained`
(safetensors) and read back through our loader
(`teachers.sd3.loading.transformer`). Every weight is redrawn at random
first, so the zero-initialised parts of a fresh model cannot hide a
wrong path. Tolerance 1e-4 on the velocity (float32; XLA and PyTorch sum
convolutions, attention and layer norms in other orders), the bar of the
SD3 acceptance.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from boot_jax.models import mmdit
from boot_jax.teachers.sd3 import loading

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TINY = dict(
  sample_size=8,
  patch_size=2,
  in_channels=4,
  num_layers=3,
  attention_head_dim=8,
  num_attention_heads=2,
  joint_attention_dim=12,
  caption_projection_dim=16,
  pooled_projection_dim=10,
  out_channels=4,
  pos_embed_max_size=12,
)
VARIANTS = {
  # SD 3 Medium's kind: no q/k norms, no second attention.
  "sd3": dict(TINY, qk_norm=None, dual_attention_layers=()),
  # SD 3.5 Medium's kind: RMS q/k norms, a second attention in block 0.
  "sd35": dict(TINY, qk_norm="rms_norm", dual_attention_layers=(0, 1)),
}


def _save(path, cfg, seed=0):
  torch.manual_seed(seed)
  model = diffusers.SD3Transformer2DModel(**cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Matrices at the scale of their fan-in (activations stay O(1), as
      # in a trained model), vectors around their initial value.
      fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 0
      std = fan_in**-0.5 if fan_in else 0.1
      base = 1.0 if "norm" in name and p.ndim == 1 else 0.0
      p.copy_(base + std * torch.randn_like(p))
  model.eval()
  model.save_pretrained(path / "transformer")
  return model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("height,width", [(8, 8), (8, 12)])
def test_velocity_matches_diffusers(tmp_path, variant, height, width):
  cfg = VARIANTS[variant]
  reference = _save(tmp_path, cfg)
  module, params = loading.transformer(str(tmp_path))
  rng = np.random.default_rng(1)
  b, length = 2, 5
  x = rng.standard_normal((b, height, width, 4)).astype(np.float32)
  t = np.array([0.93, 0.21], np.float32)
  text = rng.standard_normal((b, length, 12)).astype(np.float32)
  pooled = rng.standard_normal((b, 10)).astype(np.float32)
  ours = np.asarray(
    module.apply(
      {"params": params}, jnp.asarray(x), jnp.asarray(t), text, pooled
    )
  )
  with torch.no_grad():
    want = reference(
      hidden_states=torch.from_numpy(x).permute(0, 3, 1, 2),
      encoder_hidden_states=torch.from_numpy(text),
      pooled_projections=torch.from_numpy(pooled),
      timestep=torch.from_numpy(t * 1000),
    ).sample.permute(0, 2, 3, 1)
  want = want.numpy()
  assert ours.shape == want.shape == (b, height, width, 4)
  assert np.abs(want).max() > 0.1  # not a vanishing output
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)


def test_position_table_is_diffusers(tmp_path):
  """`mmdit.position_table` against the buffer diffusers saves, to the
  loader's tolerance; a trained (changed) table is refused."""
  cfg = dict(VARIANTS["sd3"], pos_embed_max_size=24, sample_size=16)
  model = _save(tmp_path, cfg)
  theirs = model.pos_embed.pos_embed.numpy().reshape(24 * 24, -1)
  diff = np.abs(mmdit.position_table(cfg) - theirs).max()
  assert diff < loading.POSITION_TOLERANCE, diff
  model.pos_embed.pos_embed.add_(0.01)
  model.save_pretrained(tmp_path / "transformer")
  with pytest.raises(loading.SD3Error, match="trained position table"):
    loading.transformer(str(tmp_path))


def test_unknown_options_are_refused_in_one_line(tmp_path):
  _save(tmp_path, VARIANTS["sd3"])
  path = tmp_path / "transformer" / "config.json"
  cfg = json.loads(path.read_text())
  for key, value, message in (
    ("qk_norm", "layer_norm", "qk_norm='layer_norm' is not supported"),
    ("pos_embed_max_size", None, "pos_embed_max_size must be set"),
    ("use_something", True, "has use_something"),
  ):
    path.write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(loading.SD3Error, match=message):
      loading.transformer(str(tmp_path))
