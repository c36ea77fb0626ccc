"""Wrong dot_general on a data=2 x fsdp=2 x tensor=2 mesh (8 fake CPU
devices), jax + numpy only. One dot:

    y = x @ k     x [128, 128]  P(("data", "fsdp"), "tensor")
                  k [128, 128]  P("tensor", "fsdp")
                  y constrained to P(("data", "fsdp"), "tensor")

Every spec is legal (no axis twice). The one-device result is the
reference; float32 reordering gives ~1e-6, the bug gives O(1) errors in the
rows of batch shards 1 and 2. Exit status 1 when wrong (> 1e-3).

Options:
  --shardy=0|1            jax_use_shardy_partitioner (default: jax's, True)
  --order=reshape|mesh_utils|swap   device grid (swap: data/fsdp swapped)
  --precision=default|highest       jax_default_matmul_precision
  --case=dot     (default) the single dot above, output constraint
  --case=reshape no constraint at all: x [64, 2, 128] P(("data","fsdp")),
                 h = x.reshape(128, 128); y = h + h @ k (how the MLP
                 student's interleaved batch hits it)
  --case=ok_out  control: output constrained to P(("data","fsdp")) (ok)
  --case=ok_batch_order  control: batch axes ("fsdp","data") (ok)
  --hlo=FILE     write the compiled HLO
XLA_FLAGS from the environment are kept (the device count is appended).
"""

import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

opts = dict(
  a[2:].split("=", 1) if "=" in a else (a[2:], "1") for a in sys.argv[1:]
)
if "shardy" in opts:
  jax.config.update("jax_use_shardy_partitioner", opts["shardy"] == "1")
if "precision" in opts:
  jax.config.update("jax_default_matmul_precision", opts["precision"])
case = opts.get("case", "dot")
order = opts.get("order", "reshape")
devs = jax.devices()
if order == "mesh_utils":
  from jax.experimental import mesh_utils  # noqa: E402

  grid = mesh_utils.create_device_mesh((2, 2, 2), devs)
elif order == "swap":
  grid = np.array(devs).reshape(2, 2, 2).transpose(1, 0, 2)
else:
  grid = np.array(devs).reshape(2, 2, 2)
mesh = Mesh(grid, ("data", "fsdp", "tensor"))


def S(*spec):
  return NamedSharding(mesh, P(*spec))


rows = ("fsdp", "data") if case == "ok_batch_order" else ("data", "fsdp")
rng = np.random.default_rng(0)
k = (rng.normal(size=(128, 128)) / np.sqrt(128)).astype(np.float32)
k_sh = S("tensor", "fsdp")
if case == "reshape":
  x = rng.normal(size=(64, 2, 128)).astype(np.float32)
  x_sh = S(rows)

  def f(x, k):
    h = x.reshape(128, 128)
    return h + h @ k

else:
  x = rng.normal(size=(128, 128)).astype(np.float32)
  x_sh = S(rows, "tensor")
  out_sh = S(rows) if case == "ok_out" else S(rows, "tensor")

  def f(x, k):
    return jax.lax.with_sharding_constraint(x @ k, out_sh)


ref = np.asarray(jax.jit(f)(x, k), np.float64)  # one device
g = jax.jit(f)
xs, ks = jax.device_put(x, x_sh), jax.device_put(k, k_sh)
out = np.asarray(g(xs, ks), np.float64)
if "hlo" in opts:
  with open(opts["hlo"], "w") as fh:
    fh.write(g.lower(xs, ks).compile().as_text())
err = np.abs(out - ref).max(axis=1)
print(
  f"jax {jax.__version__} jaxlib {jaxlib.__version__} | case {case} "
  f"| shardy {jax.config.jax_use_shardy_partitioner} "
  f"| order {order} [{' '.join(str(d.id) for d in grid.flat)}] "
  f"| XLA_FLAGS '{os.environ['XLA_FLAGS'].strip()}'"
)
print(
  "max abs diff vs one device:",
  f"{err.max():.3g}",
  "| per batch shard:",
  " ".join(f"{v:.2g}" for v in err.reshape(4, -1).max(axis=1)),
)
bad = err.max() > 1e-3
print("WRONG" if bad else "ok")
sys.exit(1 if bad else 0)
