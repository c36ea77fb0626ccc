"""The device mesh from the config, and shardings of batches and state.

`config.mesh` names the axes `data`, `fsdp` and `tensor` with sizes; one
size may be -1 to take the remaining devices. Batches are split over
(data, fsdp); parameters, optimizer state and the teacher are replicated
over the mesh (pure data parallelism).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


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


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (example) axis split over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def with_sharding(abstract_tree, sharding):
  """ShapeDtypeStructs of a tree, all carrying `sharding`."""
  return jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    abstract_tree,
  )
