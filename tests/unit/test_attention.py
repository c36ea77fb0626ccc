"""Memory-efficient attention (`models.attention`) against the plain one.

Tolerances (float32): 1e-5 max abs. Blocked attention sums the same
products as the full score matrix, in the same order within a row; the
differences seen are a few ulp of O(1) outputs (2e-7 to 7e-7 by hand).
`CHUNK_SCORES` is made small here so that every shape is split into
several query blocks (at its default, these tiny shapes are one block).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from boot_jax import models, testing
from boot_jax.config import recipes
from boot_jax.models import attention
from boot_jax.teachers.sd import sd_teacher

TOL = 1e-5


def _qkv(tq, tk, heads=3, d=8, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(2, tq, heads, d), (2, tk, heads, d), (2, tk, heads, d)]
  return [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]


@pytest.mark.parametrize("tq,tk,block", [(300, 257, 64), (64, 77, 16)])
def test_chunked_matches_full_attention_and_its_gradient(tq, tk, block):
  q, k, v = _qkv(tq, tk)
  ref = jax.nn.dot_product_attention(q, k, v)
  out = attention.chunked(q, k, v, block=block)
  assert out.shape == ref.shape
  assert float(jnp.abs(out - ref).max()) <= TOL

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

  g_ref = jax.grad(loss(jax.nn.dot_product_attention), (0, 1, 2))(q, k, v)
  g_out = jax.grad(
    loss(lambda q, k, v: attention.chunked(q, k, v, block=block)), (0, 1, 2)
  )(q, k, v)
  for a, b in zip(g_out, g_ref, strict=True):
    assert float(jnp.abs(a - b).max()) <= TOL


def test_chunked_holds_one_block_of_scores():
  # The compiled program's temporaries: the full score matrix is
  # 2 x 3 x 2048 x 2048 x 4 B = 100 MB; one block of 128 queries 6 MB.
  q, k, v = _qkv(2048, 2048)

  def temp(fn):
    grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), (0, 1, 2))
    lowered = jax.jit(grad).lower(q, k, v)
    return lowered.compile().memory_analysis().temp_size_in_bytes

  full = temp(attention.reference)
  blocked = temp(lambda q, k, v: attention.chunked(q, k, v, block=128))
  print(
    f"temporaries: full {full / 2**20:.1f} MiB, blocked "
    f"{blocked / 2**20:.1f} MiB"
  )
  assert full > 2 * 3 * 2048 * 2048 * 4
  assert blocked < full / 5


def test_pallas_kernel_matches_in_interpret_mode():
  # The TPU kernel, run by Pallas' interpreter on the CPU (no TPU here).
  from jax.experimental.pallas import tpu as pltpu

  q, k, v = _qkv(128, 256, heads=2)
  with pltpu.force_tpu_interpret_mode():
    out = attention._pallas(q, k, v, None)
  assert float(jnp.abs(out - attention.reference(q, k, v)).max()) <= TOL


def test_auto_picks_per_backend():
  bf = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
  f32 = jnp.zeros((1, 256, 2, 64), jnp.float32)
  text = jnp.zeros((1, 77, 2, 64), jnp.bfloat16)
  assert attention.resolve("auto", bf, bf, "gpu") == "cudnn"
  assert attention.resolve("auto", f32, f32, "gpu") == "chunked"
  assert attention.resolve("auto", bf, bf, "tpu") == "pallas"
  assert attention.resolve("auto", bf, text, "tpu") == "chunked"
  assert attention.resolve("auto", bf, bf, "cpu") == "chunked"
  assert attention.resolve("plain", bf, bf, "gpu") == "plain"


def test_bad_implementations_are_refused():
  with pytest.raises(attention.AttentionError, match="expected one of"):
    attention.check("flash")
  with pytest.raises(attention.AttentionError, match="GPU only, not cpu"):
    attention.check("cudnn", "cpu")
  with pytest.raises(attention.AttentionError, match="TPU only"):
    attention.check("pallas", "cpu")


@pytest.fixture
def small_blocks(monkeypatch):
  monkeypatch.setattr(attention, "CHUNK_SCORES", 64)


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_our_unet_chunked_matches_plain(small_blocks):
  del small_blocks
  cfg = recipes.unet_model(num_res_blocks=1, attention_resolutions=(16, 8))
  outs = {}
  params = None
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
  t = jnp.asarray([0.3, 0.9])
  for impl in ("plain", "chunked", "auto"):
    module = models.make_model(cfg, (16, 16, 3), attention=impl)
    if params is None:
      params = models.init_params(module, jax.random.key(0), (16, 16, 3))
      # Zero-initialised output layers would hide the attention path.
      params = jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
        params,
      )
    # One compiled program per implementation (op by op, the UNet's
    # hundreds of small ops each dispatch and compile on their own).
    outs[impl] = np.asarray(jax.jit(module.apply)({"params": params}, x, t))
  assert np.abs(outs["plain"]).max() > 0.1
  assert np.abs(outs["chunked"] - outs["plain"]).max() <= TOL
  assert np.abs(outs["auto"] - outs["plain"]).max() <= TOL


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_sd_unet_and_vae_chunked_match_plain(small_blocks, tmp_path):
  del small_blocks
  pytest.importorskip("torch")
  from boot_jax import teachers

  testing.make_folder(tmp_path)
  outs = {}
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
  t = jnp.asarray([999, 20], jnp.int32)
  cond = rng.standard_normal((2, 77, 32)).astype(np.float32)
  for impl in ("plain", "chunked"):
    teacher = teachers.build_teacher(
      ml_collections.ConfigDict(
        dict(name="sd", path=str(tmp_path / "sd"), resolution=32)
      ),
      attention=impl,
    )
    unet = teacher.apply(teacher.params, x, t, cond)  # native: epsilon
    vae = sd_teacher.decode(teacher.parts, x, attention=impl)
    outs[impl] = (np.asarray(unet), np.asarray(vae))
  pairs = zip(("unet", "vae"), outs["chunked"], outs["plain"], strict=True)
  for name, a, b in pairs:
    print(f"{name}: chunked vs plain {np.abs(a - b).max():.2e} max abs")
    assert np.abs(b).max() > 0.1
    assert np.abs(a - b).max() <= TOL
  # The interception really ran: plain diffusers code computes the
  # softmax in another order, so outputs are close but not bit-equal.
  assert not np.array_equal(outs["chunked"][0], outs["plain"][0])
