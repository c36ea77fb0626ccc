"""The device mesh, logical-axis rules, and shardings of batches and state.

`config.mesh` names the axes `data`, `fsdp` and `tensor` with sizes; one
size may be -1 to take the remaining devices. Batches are split over
(data, fsdp). Every model parameter carries logical axis names
(`models.layers`); `config.sharding.rules` maps them onto mesh axes, FSDP
style: a large dimension of each parameter over `fsdp`, the hidden widths
of MLPs and attention optionally over `tensor`. A dimension that does not
divide evenly by its mesh axes stays whole, and a parameter that the rules
leave unsplit over `fsdp` gets its largest evenly divisible dimension split
over `fsdp` (`fsdp_fallback`), so parameters without names are sharded too.
The optimizer state and the EMA follow their parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from boot_jax.config import defaults

AXES = ("data", "fsdp", "tensor")
# The batch is split over fsdp (major) and data (minor). The other order,
# ("data", "fsdp"), meets a bug of XLA's SPMD partitioner (jax 0.10.2) on
# meshes with all three axes > 1: a dot whose rows are split over
# (A, B) and columns over C, with a kernel split (C, B), B the minor row
# axis, returns rows of the wrong devices. Parameters are never split over
# data, so with data minor the pattern cannot occur (docs/scaling.md,
# "Three-axis meshes"; repro/three_axis_mesh.py reproduces it).
BATCH_AXES = ("fsdp", "data")

# The logical axis rules by default: `config.defaults.DEFAULT_RULES`.
DEFAULT_RULES = defaults.DEFAULT_RULES
TEACHER_PLACEMENTS = ("auto", "replicate", "fsdp")


def mesh_shape(config, num_devices: int) -> tuple[int, ...]:
  """Resolves the sizes of `config.mesh` (one -1 fills the rest).

  Without a -1 the mesh may use fewer devices than there are (the first
  ones), e.g. `data=1` for a one-device run on a multi-device host.
  """
  sizes = [int(config.get(a, 1)) for a in AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError("at most one mesh size may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes must be positive or -1, got {sizes}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f"mesh {dict(zip(AXES, sizes, strict=True))} does not divide the "
        f"{num_devices} devices"
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) > num_devices:
    raise ValueError(
      f"mesh {dict(zip(AXES, sizes, strict=True))} needs {math.prod(sizes)} "
      f"devices, but {num_devices} are available"
    )
  return tuple(sizes)


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
  """The named mesh (Auto axis types, as linen partitioning needs)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(
    shape,
    AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
    devices=devices[: math.prod(shape)],
  )


def needs_step_sync(mesh) -> bool:
  """Whether each step must finish before the next is dispatched.

  XLA's CPU client runs every fake device's program on one shared thread
  pool; with several collective programs queued at once the pool can run
  out of threads inside a rendezvous and deadlock (seen with 8 fake
  devices on 2 cores). Accelerators do not share that pool.
  """
  return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def batch_size_per_shard(mesh, batch_size: int) -> int:
  """Checks that the batch splits evenly over (data, fsdp)."""
  shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
  if batch_size % shards:
    raise ValueError(
      f"train.batch_size={batch_size} is not divisible by the {shards} "
      f"devices the batch is split over (mesh data={mesh.shape['data']} x "
      f"fsdp={mesh.shape['fsdp']})"
    )
  return batch_size // shards


def rules_from_config(config) -> tuple[tuple[str, str | None], ...]:
  """`config.sharding.rules` as (logical name, mesh axis or None) pairs."""
  section = config.get("sharding") if hasattr(config, "get") else None
  raw = DEFAULT_RULES if section is None else section.get("rules")
  rules = []
  for item in raw or ():
    if len(item) != 2:
      raise ValueError(f"a sharding rule is [logical_name, mesh_axis]: {item}")
    name, axis = item
    if axis is not None and axis not in AXES:
      raise ValueError(
        f"sharding rule {name!r} names mesh axis {axis!r}; expected one of "
        f"{AXES} or None"
      )
    rules.append((str(name), axis))
  return tuple(rules)


def logical_specs(boxed_tree):
  """Logical PartitionSpecs of a tree with `nn.Partitioned` boxes.

  Leaves without boxes (scalars, optimizer counters, unnamed parameters)
  get `P()`.
  """
  return nn.get_partition_spec(boxed_tree)


def _mesh_spec(
  shape: Sequence[int],
  logical: P,
  mesh,
  rules: dict,
  fsdp_fallback: bool,
  min_fallback_size: int,
) -> P:
  """One leaf's mesh PartitionSpec from its logical spec (see module doc)."""
  names = tuple(logical) + (None,) * (len(shape) - len(tuple(logical)))
  used: set[str] = set()
  axes: list[str | None] = []
  for dim, name in zip(shape, names, strict=True):
    axis = rules.get(name) if isinstance(name, str) else None
    if (
      axis is None
      or axis in used
      or mesh.shape[axis] == 1
      or dim % mesh.shape[axis]
    ):
      axes.append(None)
      continue
    axes.append(axis)
    used.add(axis)
  n = mesh.shape["fsdp"]
  if (
    fsdp_fallback
    and n > 1
    and "fsdp" not in used
    and math.prod(shape) >= min_fallback_size
  ):
    free = [i for i, a in enumerate(axes) if a is None and shape[i] % n == 0]
    if free:
      axes[max(free, key=lambda i: shape[i])] = "fsdp"
  while axes and axes[-1] is None:
    axes.pop()
  return P(*axes)


def tree_shardings(
  abstract_tree,
  specs,
  mesh,
  rules,
  fsdp_fallback: bool = True,
  min_fallback_size: int = 1024,
):
  """NamedShardings for a tree of arrays from its logical specs.

  Args:
    abstract_tree: arrays or ShapeDtypeStructs.
    specs: a matching tree of logical PartitionSpecs (`logical_specs`).
    mesh: the device mesh.
    rules: (logical name, mesh axis) pairs.
    fsdp_fallback: split the largest divisible dimension over `fsdp` when
      the rules leave a leaf unsplit over it.
    min_fallback_size: leaves with fewer elements stay replicated.
  """
  rule_map = dict(rules)

  def one(leaf, spec):
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(
      mesh,
      _mesh_spec(shape, spec, mesh, rule_map, fsdp_fallback, min_fallback_size),
    )

  return jax.tree.map(
    one, abstract_tree, specs, is_leaf=lambda x: isinstance(x, P)
  )


def teacher_placement(config, num_bytes: int) -> str:
  """'replicate' or 'fsdp' for a frozen teacher of `num_bytes` parameters.

  `sharding.teacher='auto'` shards the teacher over fsdp once it is larger
  than `sharding.replicate_teacher_below_mb`.
  """
  section = config.get("sharding") or {}
  mode = section.get("teacher", "auto")
  if mode not in TEACHER_PLACEMENTS:
    raise ValueError(
      f"sharding.teacher must be one of {TEACHER_PLACEMENTS}, got {mode!r}"
    )
  if mode == "auto":
    limit = float(section.get("replicate_teacher_below_mb", 1024))
    mode = "fsdp" if num_bytes > limit * 2**20 else "replicate"
  return mode


def tree_bytes(tree) -> int:
  return int(
    sum(
      math.prod(x.shape) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)
    )
  )


def shard_bytes(abstract, shardings) -> int:
  """Bytes one device holds of a tree placed by `shardings`, from the
  shard shapes alone (`abstract` may be ShapeDtypeStructs: nothing is
  allocated). For meshes and sizes no machine here has."""
  return int(
    sum(
      math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
      for a, s in zip(
        jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True
      )
    )
  )


def bytes_per_device(tree) -> dict:
  """Bytes of a tree of arrays held by each device (addressable shards)."""
  out: dict = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (example) axis split over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def local_indices(sharding: NamedSharding, batch_size: int) -> np.ndarray:
  """Global indices of the batch rows this process holds, in the order
  `jax.make_array_from_process_local_data` expects its local data."""
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  spans = sorted(
    {
      (
        idx[0].start or 0,
        batch_size if idx[0].stop is None else idx[0].stop,
      )
      for idx in index_map.values()
    }
  )
  return np.concatenate([np.arange(a, b) for a, b in spans])


def assemble_batch(sharding: NamedSharding, local_tree, batch_size: int):
  """Global arrays from each process's rows (`local_indices`) of a batch."""

  def one(x):
    return jax.make_array_from_process_local_data(
      sharding, x, (batch_size,) + tuple(x.shape[1:])
    )

  return jax.tree.map(one, local_tree)


def initialize_distributed(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  heartbeat_timeout_s: int = 30,
) -> None:
  """Starts JAX's multi-process runtime (call before any other jax use).

  With `coordinator` (host:port) the process count and id must be given
  too; this is how `launch/local.sh` runs several CPU processes, whose
  collectives then go over gloo. Without it JAX finds the coordinator
  itself on Cloud TPU VMs, under SLURM, Open MPI and on GKE.

  A process that loses contact with the others (one was killed) fails
  within about `heartbeat_timeout_s` seconds instead of hanging.
  """
  if coordinator and (num_processes is None or process_id is None):
    raise ValueError(
      "--coordinator needs --num_processes and --process_id as well"
    )
  if coordinator:
    # Several CPU processes on one machine: collectives over gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator or None,
    num_processes=num_processes,
    process_id=process_id,
    heartbeat_timeout_seconds=heartbeat_timeout_s,
    initialization_timeout=120,
  )


def is_lead() -> bool:
  """Whether this is process 0: the one that writes metrics and images."""
  return jax.process_index() == 0
