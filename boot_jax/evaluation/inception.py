r"""The standard FID feature extractor (Inception-v3, 2048-d pool features).

Our Flax network computes what the FID literature's extractor computes:
TensorFlow's 2015 Inception-v3 graph as pytorch-fid rebuilds it (its
`FIDInceptionA`, `C` and `E` blocks differ from torchvision's: average
pools that do not count padding, a max pool in the last block), with
the input resized to 299x299 (bilinear, half-pixel centres, no
antialiasing) and scaled from [0, 1] to [-1, 1]. Batch norms use their
running statistics (epsilon 1e-3).

Weights come from a local safetensors file. Make it once from the standard
`pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's release of the FID
weights, downloaded by you from
https://github.com/mseitzer/pytorch-fid/releases):

    python -m boot_jax.inception --pth pt_inception-2015-12-05-6726825d.pth \
      --out inception_fid.safetensors

The conversion reads the .pth with `torch.load(weights_only=True)` (no
pickled code runs); nothing else in boot_jax reads a pickle.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.models import weights
from boot_jax.runtime import guards
from boot_jax.teachers.sd import loading

FEATURES = 2048
SIZE = 299
IDENTITY = "pytorch-fid FID Inception-v3 (pt_inception-2015-12-05), pool3"


class InceptionError(ValueError):
  """A weights file that is not the FID Inception's."""


class Conv(nn.Module):
  """torchvision's BasicConv2d: convolution without bias, batch norm
  (running statistics, epsilon 1e-3), ReLU."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    (ph, pw) = self.padding
    x = nn.Conv(
      self.features,
      self.kernel,
      strides=self.strides,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      name="conv",
    )(x)
    c = self.features
    bn = {
      k: self.param(f"bn_{k}", nn.initializers.zeros, (c,))
      for k in ("scale", "bias", "mean", "var")
    }
    x = (x - bn["mean"]) * jax.lax.rsqrt(bn["var"] + 1e-3) * bn["scale"]
    return nn.relu(x + bn["bias"])


def _avg3(x):
  """3x3 average, stride 1, padding 1, padding not counted (FID blocks)."""
  return nn.avg_pool(
    x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False
  )


def _max3(x, strides: int = 2, pad: int = 0):
  return nn.max_pool(
    x, (3, 3), strides=(strides, strides), padding=((pad, pad), (pad, pad))
  )


class BlockA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    a = Conv(64, (1, 1), name="branch1x1")(x)
    b = Conv(48, (1, 1), name="branch5x5_1")(x)
    b = Conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b)
    c = Conv(64, (1, 1), name="branch3x3dbl_1")(x)
    c = Conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(c)
    c = Conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(c)
    d = Conv(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class BlockB(nn.Module):
  @nn.compact
  def __call__(self, x):
    a = Conv(384, (3, 3), strides=2, name="branch3x3")(x)
    b = Conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b = Conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b)
    b = Conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(b)
    return jnp.concatenate([a, b, _max3(x)], axis=-1)


class BlockC(nn.Module):
  c7: int

  @nn.compact
  def __call__(self, x):
    c7, row, col = self.c7, ((1, 7), (0, 3)), ((7, 1), (3, 0))
    a = Conv(192, (1, 1), name="branch1x1")(x)
    b = Conv(c7, (1, 1), name="branch7x7_1")(x)
    b = Conv(c7, row[0], padding=row[1], name="branch7x7_2")(b)
    b = Conv(192, col[0], padding=col[1], name="branch7x7_3")(b)
    c = Conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    c = Conv(c7, col[0], padding=col[1], name="branch7x7dbl_2")(c)
    c = Conv(c7, row[0], padding=row[1], name="branch7x7dbl_3")(c)
    c = Conv(c7, col[0], padding=col[1], name="branch7x7dbl_4")(c)
    c = Conv(192, row[0], padding=row[1], name="branch7x7dbl_5")(c)
    d = Conv(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class BlockD(nn.Module):
  @nn.compact
  def __call__(self, x):
    a = Conv(192, (1, 1), name="branch3x3_1")(x)
    a = Conv(320, (3, 3), strides=2, name="branch3x3_2")(a)
    b = Conv(192, (1, 1), name="branch7x7x3_1")(x)
    b = Conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b)
    b = Conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b)
    b = Conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b)
    return jnp.concatenate([a, b, _max3(x)], axis=-1)


class BlockE(nn.Module):
  """The last blocks; `max_pool` for the very last (FIDInceptionE_2)."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    def split(y, prefix):
      return jnp.concatenate(
        [
          Conv(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(y),
          Conv(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(y),
        ],
        axis=-1,
      )

    a = Conv(320, (1, 1), name="branch1x1")(x)
    b = split(Conv(384, (1, 1), name="branch3x3_1")(x), "branch3x3_2")
    c = Conv(448, (1, 1), name="branch3x3dbl_1")(x)
    c = Conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(c)
    c = split(c, "branch3x3dbl_3")
    pooled = _max3(x, strides=1, pad=1) if self.max_pool else _avg3(x)
    d = Conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([a, b, c, d], axis=-1)


class FIDInception(nn.Module):
  """Images `[B, H, W, 3]` in [0, 1] -> pool features `[B, 2048]`."""

  @nn.compact
  def __call__(self, images):
    x = jnp.asarray(images, jnp.result_type(float))  # float32 unless x64
    b = x.shape[0]
    x = jax.image.resize(
      x, (b, SIZE, SIZE, x.shape[-1]), "bilinear", antialias=False
    )
    x = 2.0 * x - 1.0
    x = Conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = Conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = Conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max3(x)
    x = Conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = Conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max3(x)
    for name, pool in (("5b", 32), ("5c", 64), ("5d", 64)):
      x = BlockA(pool, name=f"Mixed_{name}")(x)
    x = BlockB(name="Mixed_6a")(x)
    for name, c7 in (("6b", 128), ("6c", 160), ("6d", 160), ("6e", 192)):
      x = BlockC(c7, name=f"Mixed_{name}")(x)
    x = BlockD(name="Mixed_7a")(x)
    x = BlockE(name="Mixed_7b")(x)
    x = BlockE(max_pool=True, name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


def _abstract():
  x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInception().init, jax.random.key(0), x)["params"]


_BN = {"weight": "bn_scale", "bias": "bn_bias"}
_BN |= {"running_mean": "bn_mean", "running_var": "bn_var"}


def from_pytorch(state: dict) -> dict:
  """pytorch-fid's FID Inception state dict (numpy arrays) -> our params.

  Every parameter must be found with its shape; `fc.*` (the classifier,
  unused by FID) and batch-norm counters are skipped.
  """
  params = weights.Assembly(_abstract(), InceptionError)
  for key, value in state.items():
    parts = key.split(".")
    if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
      continue
    if len(parts) < 3 or parts[-2] not in ("conv", "bn"):
      raise InceptionError(f"unexpected weight {key}: not the FID Inception")
    if parts[-2] == "conv":
      fkey = (*parts[:-2], "conv", "kernel")
      value = np.transpose(value, (2, 3, 1, 0))
    else:
      fkey = (*parts[:-2], _BN.get(parts[-1], parts[-1]))
    if fkey not in params:
      raise InceptionError(f"unexpected weight {key}: not the FID Inception")
    params.put(fkey, value, key)
  return params.tree("the FID Inception weights")


def load(path: str) -> dict:
  """Our parameters from a safetensors file made by the conversion."""
  if path.endswith((".pth", ".pt", ".bin", ".pkl")):
    raise InceptionError(
      f"{path} is a PyTorch pickle: convert it once with `python -m "
      "boot_jax.inception --pth FILE --out inception_fid.safetensors`"
    )
  if not os.path.isfile(path):
    raise InceptionError(f"Inception weights {path} do not exist")
  try:
    return from_pytorch(loading.read_safetensors(path))
  except ValueError as e:
    raise InceptionError(f"{path}: {e}") from None


@functools.cache
def _apply():
  return jax.jit(FIDInception().apply)


def features(params, images, batch_size: int = 50) -> np.ndarray:
  """Pool features `[N, 2048]` (float64) of images `[N, H, W, 3]` in
  [0, 1], `batch_size` at a time."""
  images = np.asarray(images, np.float32)
  out = [
    np.asarray(_apply()({"params": params}, images[i : i + batch_size]))
    for i in range(0, len(images), batch_size)
  ]
  return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2048))


def is_converted(path: str) -> bool:
  """Whether `path` is a safetensors file of the FID Inception's weights."""
  try:
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(path, "np") as f:
      return "Conv2d_1a_3x3.conv.weight" in set(f.keys())
  except Exception:  # noqa: BLE001 (any unreadable file is not ours)
    return False


def convert(pth: str, out: str) -> None:
  """The .pth state dict (read with weights_only=True) -> safetensors."""
  import torch  # noqa: PLC0415
  from safetensors.numpy import save_file  # noqa: PLC0415

  guards.check_replace_file(out, is_converted, "converted Inception weights")
  state = torch.load(pth, map_location="cpu", weights_only=True)
  arrays = {k: v.numpy() for k, v in state.items()}
  from_pytorch(arrays)  # refuse anything that is not the FID Inception
  tmp = out + ".tmp"
  save_file(arrays, tmp)
  os.replace(tmp, out)
