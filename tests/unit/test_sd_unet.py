"""Our Stable Diffusion UNet (models.sd_unet) against diffusers' PyTorch
`UNet2DConditionModel`, on tiny random folders that diffusers itself
writes (`save_pretrained`, safetensors), read through our own converter
(`teachers.folders.convert_by_rule`)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from boot_jax.models import sd_unet
from boot_jax.teachers import folders

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Tiny versions of the three layouts SD folders ship: SD 1.x (convolution
# projections, one head count), SD 2.x (linear projections, per-level head
# counts, upcast attention) and SDXL (a first level without attention,
# deeper transformers, text_time micro-conditioning).
CONFIGS = {
  "sd1": dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    attention_head_dim=2,
    cross_attention_dim=12,
  ),
  "sd2": dict(
    block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    attention_head_dim=(2, 4),
    cross_attention_dim=12,
    use_linear_projection=True,
    upcast_attention=True,
  ),
  "sdxl": dict(
    block_out_channels=(16, 32, 32),
    down_block_types=(
      "DownBlock2D",
      "CrossAttnDownBlock2D",
      "CrossAttnDownBlock2D",
    ),
    up_block_types=(
      "CrossAttnUpBlock2D",
      "CrossAttnUpBlock2D",
      "UpBlock2D",
    ),
    layers_per_block=1,
    attention_head_dim=(2, 2, 4),
    transformer_layers_per_block=(1, 1, 2),
    cross_attention_dim=12,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=10 + 6 * 8,
  ),
}
POOLED = 10  # SDXL's pooled text width in the tiny config


def _folder(tmp_path, name):
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
    sample_size=8, in_channels=4, out_channels=4, norm_num_groups=8,
    **CONFIGS[name],
  )  # fmt: skip
  with torch.no_grad():
    for p in unet.parameters():
      # Random, not default, weights everywhere (default norms are 1 and
      # 0, which would hide a mistake in converting them).
      p.add_(0.1 * torch.randn_like(p))
  unet.eval()
  path = tmp_path / name
  unet.save_pretrained(path, safe_serialization=True)
  return unet, str(path)


def _inputs(name, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, 8, 8, 4)).astype(np.float32)
  t = np.array([999.0, 17.0][:batch], np.float32)
  text = rng.standard_normal((batch, 5, 12)).astype(np.float32)
  added = None
  if name == "sdxl":
    added = dict(
      text_embeds=rng.standard_normal((batch, POOLED)).astype(np.float32),
      time_ids=np.tile(
        np.array([64, 64, 0, 0, 64, 64], np.float32), (batch, 1)
      ),
    )
  return x, t, text, added


def _load(path, config, module):
  x, t, text, added = _inputs(
    "sdxl" if config.get("addition_embed_type") else "sd"
  )
  boxed = jax.eval_shape(
    lambda: module.init(jax.random.key(0), x, t, text, added=added)
  )["params"]
  files = folders.weight_files(path, "diffusion_pytorch_model")
  return folders.convert_by_rule(files, nn.meta.unbox(boxed), "UNet"), boxed


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sd_unet_matches_pytorch(tmp_path, name):
  """The same weights and inputs give the same output as diffusers'
  PyTorch UNet, within 2e-5 of the output's scale (float32 on both
  sides; what differs is only the order of summation in convolutions and
  attention, ~1e-6 per layer here)."""
  unet, path = _folder(tmp_path, name)
  config = dict(unet.config)
  module = sd_unet.SDUNet(config, attention="plain")
  params, boxed = _load(path, config, module)
  x, t, text, added = _inputs(name)
  apply = jax.jit(module.apply)
  ours = np.asarray(apply({"params": params}, x, t, text, added=added))
  kwargs = {}
  if added is not None:
    kwargs["added_cond_kwargs"] = {
      k: torch.from_numpy(v) for k, v in added.items()
    }
  with torch.no_grad():
    ref = unet(
      torch.from_numpy(x).permute(0, 3, 1, 2),
      torch.from_numpy(t),
      encoder_hidden_states=torch.from_numpy(text),
      **kwargs,
    ).sample.permute(0, 2, 3, 1)
  ref = ref.numpy()
  err = np.abs(ours - ref).max()
  assert err <= 2e-5 * np.abs(ref).max(), (err, np.abs(ref).max())
  if name == "sdxl":
    # The chunked attention (the default off accelerators) computes the
    # same.
    chunked = sd_unet.SDUNet(config, attention="chunked")
    out = jax.jit(chunked.apply)({"params": params}, x, t, text, added=added)
    np.testing.assert_allclose(
      np.asarray(out), ours, rtol=0, atol=1e-5 * np.abs(ref).max()
    )
  # Every parameter carries logical axis names (for FSDP).
  leaves = jax.tree.leaves(
    boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned)
  )
  assert leaves and all(isinstance(a, nn.Partitioned) for a in leaves)


def test_sd_unet_remat_and_bf16_run(tmp_path):
  """With either remat policy, gradients equal those without (the same
  arithmetic, recomputed: to float32 rounding); in bfloat16 the output
  stays near float32's."""
  unet, path = _folder(tmp_path, "sd1")
  config = dict(unet.config)
  module = sd_unet.SDUNet(config, attention="plain")
  params, _ = _load(path, config, module)
  x, t, text, _ = _inputs("sd1")

  def grad(m):
    loss = lambda p: jnp.mean(m.apply({"params": p}, x, t, text) ** 2)  # noqa: E731
    return jax.jit(jax.grad(loss))(params)

  plain = grad(module)
  for policy in ("block", "dots"):
    remat = grad(sd_unet.SDUNet(config, attention="plain", remat=policy))
    for a, b in zip(
      jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  ref = jax.jit(module.apply)({"params": params}, x, t, text)
  low = jax.jit(
    sd_unet.SDUNet(config, dtype=jnp.bfloat16, attention="plain").apply
  )({"params": params}, x, t, text)
  scale = float(jnp.abs(ref).max())
  assert float(jnp.abs(low - ref).max()) <= 0.05 * scale


@pytest.mark.parametrize(
  "key,value,words",
  [
    ("down_block_types", ("SimpleCrossAttnDownBlock2D",), "runs DownBlock2D"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "mid_block_type"),
    ("class_embed_type", "timestep", "class_embed_type"),
    ("addition_embed_type", "text", "addition_embed_type"),
    ("transformer_layers_per_block", ((1, 2), (1, 2)), "per-layer"),
    ("attention_head_dim", (2, 2, 2), "3 entries for 2 levels"),
  ],
)
def test_unsupported_configs_are_refused_in_one_line(key, value, words):
  config = dict(CONFIGS["sd1"], **{key: value})
  if key == "down_block_types":
    config["block_out_channels"] = (16,)
  with pytest.raises(sd_unet.SDConfigError, match=words) as e:
    jax.eval_shape(
      sd_unet.SDUNet(config).init, jax.random.key(0), *_inputs("sd1")[:3]
    )
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "change,words",
  [
    (
      dict(transformer_layers_per_block=2),
      "has no weight for down_blocks_0/attentions_0/transformer_blocks_1",
    ),
    (dict(use_linear_projection=True), "does not fit"),
  ],
)
def test_weights_of_another_model_are_refused_in_one_line(
  tmp_path, change, words
):
  """A folder whose weights do not fit the config: one line naming the
  weight; the folder is left as it was."""
  unet, path = _folder(tmp_path, "sd1")
  before = sorted(os.listdir(path))
  config = dict(unet.config, **change)
  with pytest.raises(folders.FolderError, match=words) as e:
    _load(path, config, sd_unet.SDUNet(config))
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(path)) == before


def test_parameter_tree_is_diffusers_flax_ones(tmp_path):
  """Work directories written while the SD teacher ran diffusers' Flax
  UNet hold its parameter tree: ours has the same keys and shapes
  (tests/data/diffusers_flax_unet_tree.json, written by diffusers 0.39's
  FlaxUNet2DConditionModel for the sd1 config with widths 32 and 64, as
  its 32 groups need, at 8x8 latents)
  and, where that class still exists, computes the same from the same
  parameters."""
  import json
  import pathlib

  from flax import traverse_util

  saved = json.loads(
    (
      pathlib.Path(__file__).parents[1] / "data/diffusers_flax_unet_tree.json"
    ).read_text()
  )
  config = dict(CONFIGS["sd1"], block_out_channels=(32, 64), sample_size=8,
                in_channels=4, out_channels=4)  # fmt: skip
  module = sd_unet.SDUNet(config, attention="plain")
  x, t, text, _ = _inputs("sd1")
  ours = nn.meta.unbox(
    jax.eval_shape(module.init, jax.random.key(0), x, t, text)["params"]
  )
  flat = {
    "/".join(k): list(v.shape)
    for k, v in traverse_util.flatten_dict(ours).items()
  }
  assert flat == saved
  flax_cls = getattr(diffusers, "FlaxUNet2DConditionModel", None)
  if flax_cls is None:
    return  # diffusers without Flax: the saved tree is the check
  fields = set(flax_cls.__dataclass_fields__)
  theirs = flax_cls(**{k: v for k, v in config.items() if k in fields})
  params = theirs.init(
    jax.random.key(1),
    jnp.transpose(x, (0, 3, 1, 2)),
    jnp.asarray(t, jnp.int32),
    text,
  )["params"]
  ref = theirs.apply(
    {"params": params}, jnp.transpose(x, (0, 3, 1, 2)), jnp.asarray(t), text
  )
  ref = np.transpose(np.asarray(ref.sample), (0, 2, 3, 1))
  got = np.asarray(jax.jit(module.apply)({"params": params}, x, t, text))
  # diffusers' Flax GEGLU uses tanh GELU and a GroupNorm epsilon of 1e-5
  # in the transformer (PyTorch, and ours: exact GELU, 1e-6), so the two
  # differ by more than summation order: 1.3e-4 of the output's scale
  # measured, against 1e-3 here.
  assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
