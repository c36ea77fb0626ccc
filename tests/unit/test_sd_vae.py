"""Our Stable Diffusion VAE (models.sd_vae) against diffusers' PyTorch
`AutoencoderKL`, on a tiny random folder that diffusers itself writes
(`save_pretrained`, safetensors), read through our own converter."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from boot_jax.models import sd_vae
from boot_jax.teachers import folders

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

CONFIG = dict(
  block_out_channels=(8, 16, 16),
  down_block_types=("DownEncoderBlock2D",) * 3,
  up_block_types=("UpDecoderBlock2D",) * 3,
  layers_per_block=1,
  norm_num_groups=4,
  latent_channels=4,
  sample_size=16,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(**CONFIG)
  with torch.no_grad():
    for p in vae.parameters():
      p.add_(0.1 * torch.randn_like(p))  # no default 1s and 0s left
  vae.eval()
  path = tmp_path_factory.mktemp("vae")
  vae.save_pretrained(path, safe_serialization=True)
  return vae, str(path)


def _load(path, module, rename=None, files=None):
  x = np.zeros((1, 16, 16, 3), np.float32)
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), x))["params"]
  files = files or folders.weight_files(path, "diffusion_pytorch_model")
  abstract = nn.meta.unbox(boxed)
  params = folders.convert_by_rule(files, abstract, "VAE", rename=rename)
  return params, boxed


def test_vae_matches_pytorch(folder):
  """Encoder (mean and log-variance) and decoder give what diffusers'
  PyTorch AutoencoderKL gives, within 2e-5 of each output's scale (float32
  on both sides: only the summation order differs); the chunked attention
  gives the same."""
  vae, path = folder
  config = dict(vae.config)
  module = sd_vae.AutoencoderKL(config, attention="plain")
  params, boxed = _load(path, module)
  leaves = jax.tree.leaves(
    boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned)
  )
  assert leaves and all(isinstance(a, nn.Partitioned) for a in leaves)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  z = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
  encode = jax.jit(
    lambda p, x: module.apply({"params": p}, x, method=module.encode)
  )
  decode = jax.jit(
    lambda p, z: module.apply({"params": p}, z, method=module.decode)
  )
  mean, logvar = (np.asarray(a) for a in encode(params, x))
  image = np.asarray(decode(params, z))
  nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
  with torch.no_grad():
    dist = vae.encode(nchw(x)).latent_dist
    ref_image = nhwc(vae.decode(nchw(z)).sample)
  for ours, ref in (
    (mean, nhwc(dist.mean)),
    (logvar, nhwc(dist.logvar)),
    (image, ref_image),
  ):
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 2e-5 * np.abs(ref).max()
  chunked = sd_vae.AutoencoderKL(config, attention="chunked")
  out = jax.jit(
    lambda p, z: chunked.apply({"params": p}, z, method=chunked.decode)
  )(params, z)
  np.testing.assert_allclose(
    np.asarray(out), image, rtol=0, atol=1e-5 * np.abs(image).max()
  )


def test_vae_weights_under_pre_014_attention_names_load_the_same(
  folder, tmp_path
):
  """A VAE saved before diffusers 0.14 names its middle attention
  `query`/`key`/`value`/`proj_attn`: `legacy_key` reads it the same."""
  vae, path = folder
  state = {
    k.replace("to_q", "query")
    .replace("to_k", "key")
    .replace("to_v", "value")
    .replace("to_out.0", "proj_attn"): v.contiguous()
    for k, v in vae.state_dict().items()
  }
  assert any(".query." in k for k in state)
  old = tmp_path / "old.safetensors"
  safetensors_torch.save_file(state, str(old))
  module = sd_vae.AutoencoderKL(dict(vae.config))
  new, _ = _load(path, module)
  legacy, _ = _load(path, module, sd_vae.legacy_key, [str(old)])
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(legacy), strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(
    folders.FolderError, match=r"attentions\.0\.(query|key|value|proj_attn)"
  ) as e:
    _load(path, module, None, [str(old)])
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "change,words",
  [
    (dict(down_block_types=("DownBlock2D",) * 3), "runs DownEncoderBlock2D"),
    (dict(norm_type="spatial"), "norm_type"),
    (dict(act_fn="mish"), "act_fn"),
  ],
)
def test_unsupported_vae_configs_are_refused_in_one_line(change, words):
  module = sd_vae.AutoencoderKL(dict(CONFIG, **change))
  with pytest.raises(sd_vae.VAEConfigError, match=words) as e:
    jax.eval_shape(
      module.init, jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32)
    )
  assert "\n" not in str(e.value)
