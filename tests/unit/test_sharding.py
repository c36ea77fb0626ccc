"""Sharded BOOT: meshes agree, state is FSDP-sharded, restores across meshes.

The reference is the same run on one device. Tolerance for float32 runs:
the meshes only reorder sums (over the batch split across devices, and
over features split by FSDP all-gathers), so each forward and backward
value moves by a few ulp (float32 eps = 1.2e-7 of O(1) values). Twenty
AdamW steps carry those into the parameters, which are O(1): measured
max abs differences were 3e-8; 1e-6 leaves room for other CPUs while a
real error (a wrong shard, a missing all-reduce) shows at 1e-3 or more.
"""

import dataclasses
import importlib.util
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from boot_jax.config import defaults, recipes
from boot_jax.runtime import checkpoint, sharding
from boot_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATOL = 1e-6


def _gmm_config(mesh, steps=20):
  spec = importlib.util.spec_from_file_location(
    "gmm_config", ROOT / "configs" / "gmm.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("circle")
  c.train.steps = steps
  c.train.log_every = 5
  c.train.batch_size = 64
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def _unet_config(mesh, teacher_placement="auto"):
  """A random-weight UNet teacher and its student (sizes, not quality)."""
  c = defaults.base_config()
  model = recipes.unet_model(
    channels=32, num_res_blocks=1, attention_resolutions=(8,)
  )
  c.teacher = recipes.random_unet_teacher(model, (16, 16, 1))
  c.student.init = "teacher"
  c.boot.num_steps = 8
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.log_every = 2
  c.optim.ema_decay = 0.99
  c.sharding.teacher = teacher_placement
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def _run(config, state=None, until=None):
  s = trainer.setup(config)
  state, _ = trainer.run(s, state, until=until)
  return s, state


def _max_diff(a, b) -> float:
  a, b = jax.device_get(a), jax.device_get(b)
  return max(
    float(np.max(np.abs(x - y)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.fixture(scope="module")
def reference():
  s, state = _run(_gmm_config((1, 1, 1)))
  assert s.mesh.devices.size == 1
  return jax.device_get(state.params)


# (2, 2, 2): every axis > 1, the mesh where XLA's partitioner bug showed
# (sharding.BATCH_AXES explains the batch order that avoids it).
@pytest.mark.parametrize(
  "mesh",
  [
    (2, 4, 1),
    pytest.param((8, 1, 1), marks=pytest.mark.slow),
    (1, 8, 1),
    (2, 2, 2),
    pytest.param((1, 4, 2), marks=pytest.mark.slow),
  ],
)
def test_meshes_agree_and_trace_once(reference, mesh):
  s, state = _run(_gmm_config(mesh))
  assert s.mesh.devices.size == 8
  assert _max_diff(state.params, reference) <= ATOL
  # 20 steps crossing 4 logging boundaries: the step compiled once.
  assert s.traces == ["train_step"]


def test_retrace_is_detected():
  """The trace counter sees a retrace (here forced by a new batch shape)."""
  s = trainer.setup(_gmm_config((1, 1, 1), steps=2))
  state = s.init_state()
  batch = s.draw(0, 0)
  state, _ = s.train_step(state, s.teacher.params, batch)
  state, _ = s.train_step(state, s.teacher.params, s.draw(1, 0))
  assert s.traces == ["train_step"]
  half = jax.tree.map(lambda x: x[:32], batch)
  s.train_step(state, s.teacher.params, half)
  assert len(s.traces) == 2


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_fsdp_state_bytes_per_device():
  s = trainer.setup(_unet_config((1, 8, 1), teacher_placement="fsdp"))
  state = s.init_state()
  owned = dict(params=state.params, opt_state=state.opt_state)
  total = sharding.tree_bytes(owned)
  per_device = sharding.bytes_per_device(owned)
  assert len(per_device) == 8
  for device, nbytes in per_device.items():
    assert abs(nbytes / (total / 8) - 1) <= 0.10, (device, nbytes, total)
  # The EMA and the frozen teacher (placement 'fsdp') are split as well.
  for tree in (state.ema_params, s.teacher.params):
    counts = sharding.bytes_per_device(tree).values()
    assert max(counts) <= 1.10 * sharding.tree_bytes(tree) / 8
  # Replicated placement keeps a whole teacher on every device.
  r = trainer.setup(_unet_config((1, 8, 1), teacher_placement="replicate"))
  counts = sharding.bytes_per_device(r.teacher.params).values()
  assert min(counts) == sharding.tree_bytes(r.teacher.params)


def _flat(tree):
  return np.concatenate(
    [np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))]
  )


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_unet_boot_and_refinement_meshes_agree():
  """The FSDP-sharded UNet student on the (2, 2, 2) mesh (every axis > 1):
  2 BOOT steps give the one-device run's student (1e-5: convolutions over
  sharded channels reorder longer sums than the MLP's), then 2 steps of
  the refinement phase (boot.refine) give its student and fake network,
  and the fake network and both Adams are FSDP-split like the student.

  Tolerance: Adam with b1 = 0 (SiD's) divides each gradient by its own
  magnitude, so an element whose gradient is a sum cancelling to rounding
  level moves by +-lr on either mesh with a sign set by the summation
  order (measured: 1.6e-4 of the student's elements, max 2.6e-5 at lr
  1e-3). The check is on the whole phase's movement: the mean |mesh - one
  device| is <= 1e-4 of the mean |movement| (measured 9e-7 student, 8e-8
  fake network), while a wrong shard or a missing all-reduce changes most
  elements' updates (ratio of order 1); and no element differs by more
  than one step (lr)."""
  lr = 1e-3

  def config(mesh):
    c = _unet_config(mesh, teacher_placement="fsdp")
    c.train.steps = 2
    c.boot.refine = True
    c.refine.steps = 2
    c.refine.lr = c.refine.fake_lr = lr  # moves the weights visibly
    return c

  _, boot = _run(config((1, 1, 1)), until=2)
  starts = {"params": _flat(boot.params)}
  _, ref = _run(config((1, 1, 1)), state=boot)  # donates `boot`
  s = trainer.setup(config((2, 2, 2)))
  state, _ = trainer.run(s, None, until=2)
  assert int(state.step) == 2
  boot_diff = np.abs(_flat(state.params) - starts["params"]).max()
  assert boot_diff <= 1e-5, boot_diff
  state, _ = trainer.run(s, state)
  assert int(state.step) == 4
  assert s.traces == ["train_step"]  # and the refinement step's own jit
  starts["fake"] = _flat(s.teacher.params)
  pairs = {
    "params": (state.params, ref.params),
    "fake": (state.refine["fake"], ref.refine["fake"]),
  }
  for name, (got, want) in pairs.items():
    got, want = _flat(got), _flat(want)
    moved = np.mean(np.abs(want - starts[name]))
    assert moved > 1e-4, name  # the phase did train both
    diff = np.abs(got - want)
    assert diff.mean() <= 1e-4 * moved, (name, diff.mean(), moved)
    assert diff.max() <= lr, (name, diff.max())
  for name in ("fake", "fake_opt", "student_opt"):
    tree = state.refine[name]
    counts = sharding.bytes_per_device(tree).values()
    # fsdp = 2 (and tensor = 2 where a weight has a tensor axis).
    assert max(counts) <= 0.55 * sharding.tree_bytes(tree), name


def test_restore_on_other_meshes(tmp_path):
  """Saved on fsdp=8, restored on (data=2, fsdp=2) and on one device."""
  full_setup, full = _run(_gmm_config((1, 8, 1)))
  saver, half = _run(_gmm_config((1, 8, 1)), until=10)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(10, {"state": half})
  ckpt.close()
  for mesh in [(2, 2, 1), (1, 1, 1)]:
    s = trainer.setup(_gmm_config(mesh))
    restored = checkpoint.read_item(
      str(tmp_path / "ckpt"), "state", s.abstract_state()
    )
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.mesh.devices.size == int(np.prod(mesh))
    assert _max_diff(restored.params, half.params) == 0.0
    state, _ = trainer.run(s, restored)
    assert int(state.step) == 20
    assert _max_diff(state.params, full.params) <= ATOL
  del full_setup, saver


def test_shard_bytes_from_shapes_equal_the_placed_arrays():
  """`shard_bytes` (shapes only) against the bytes the devices really
  hold once the same tree is placed (`bytes_per_device`)."""
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(fsdp=4, tensor=2)))
  P = jax.sharding.PartitionSpec
  tree = {
    "w": np.ones((8, 6), np.float32),
    "b": np.ones((3,), np.float32),
    "h": np.ones((4, 12), np.float16),
  }
  specs = {"w": P("fsdp", None), "b": P(), "h": P("tensor", "fsdp")}
  shardings = jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs)
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree
  )
  placed = jax.device_put(tree, shardings)
  held = max(sharding.bytes_per_device(placed).values())
  assert sharding.shard_bytes(abstract, shardings) == held
  # By hand: 2 of w's 8 rows, all of b, a [2, 3] block of h.
  assert held == 2 * 6 * 4 + 3 * 4 + 2 * 3 * 2


def test_rules_and_fallback():
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(fsdp=4, tensor=2)))
  rules = sharding.DEFAULT_RULES
  shapes = {
    "dense": jax.ShapeDtypeStruct((64, 256), np.float32),
    "odd": jax.ShapeDtypeStruct((6, 10), np.float32),
    "unnamed": jax.ShapeDtypeStruct((3, 3, 64, 128), np.float32),
    "small": jax.ShapeDtypeStruct((8,), np.float32),
  }
  specs = {
    "dense": jax.sharding.PartitionSpec("embed", "mlp"),
    "odd": jax.sharding.PartitionSpec("embed", "mlp"),
    "unnamed": jax.sharding.PartitionSpec(),
    "small": jax.sharding.PartitionSpec(),
  }
  out = sharding.tree_shardings(shapes, specs, mesh, rules)
  P = jax.sharding.PartitionSpec
  assert out["dense"].spec == P("fsdp", "tensor")
  assert out["odd"].spec == P(None, "tensor")  # 6 % 4 != 0: not split
  assert out["unnamed"].spec == P(None, None, None, "fsdp")  # largest dim
  assert out["small"].spec == P()
  off = sharding.tree_shardings(shapes, specs, mesh, rules, fsdp_fallback=False)
  assert off["unnamed"].spec == P()


def test_bad_sharding_config():
  c = _gmm_config((1, 1, 1))
  c.sharding.rules = [["embed", "model"]]
  with pytest.raises(ValueError, match="mesh axis 'model'"):
    trainer.setup(c)
  c = _gmm_config((1, 1, 1))
  c.sharding.teacher = "everywhere"
  with pytest.raises(ValueError, match="sharding.teacher"):
    trainer.setup(c)


@pytest.mark.slow  # a UNet or multi-mesh compile: tens of seconds
def test_bf16_and_remat_switches():
  """bf16 compute keeps float32 state; remat leaves the math unchanged."""
  base = _unet_config((1, 1, 1))
  _, ref = _run(base)
  c = _unet_config((1, 1, 1))
  c.train.remat = True
  s, state = _run(c)
  assert _max_diff(state.params, ref.params) <= 1e-6
  c = _unet_config((1, 1, 1))
  c.train.compute_dtype = "bfloat16"
  s, state = _run(c)
  assert s.student.module.dtype is not None
  dtypes = {x.dtype for x in jax.tree.leaves(dataclasses.asdict(state))}
  assert dtypes <= {np.dtype(np.float32), np.dtype(np.int32)}
  # bf16 has 8 mantissa bits: the step differs, but stays close.
  assert 0 < _max_diff(state.params, ref.params) <= 1e-2
  c.train.compute_dtype = "float16"
  with pytest.raises(ValueError, match="compute_dtype"):
    trainer.setup(c)
