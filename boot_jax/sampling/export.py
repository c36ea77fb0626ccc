"""A `jax.export` artifact of the one-step sampler, which runs with no
boot_jax installed (what `python -m boot_jax.export` writes; the folder's
files are listed in boot_jax/export.py).

The folder is written in a temporary directory beside `out` and moved into
place whole (`runtime.guards.replace_dir`), so a failed export leaves
nothing; an existing folder is replaced only when `runtime.guards` says it
is an earlier export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from boot_jax.runtime import guards, paths
from boot_jax.sampling import inference

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# One artifact for a laptop, a GPU and a TPU (lowering needs no device).
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


class ExportError(ValueError):
  """An export that cannot be made as asked."""


def _inputs(model: inference.Model, batch):
  """(name, ShapeDtypeStruct) of the sampler's inputs after the params."""
  b = jax.export.symbolic_shape("b")[0] if batch is None else int(batch)
  teacher = model.teacher
  out = [
    ("eps", jax.ShapeDtypeStruct((b,) + teacher.sample_shape, jnp.float32))
  ]
  spec = teacher.condition
  if spec.kind == "class":
    out.append(("labels", jax.ShapeDtypeStruct((b,), jnp.int32)))
  elif spec.kind == "text":
    out.append(
      ("text", jax.ShapeDtypeStruct((b,) + tuple(spec.shape), jnp.float32))
    )
  if model.guided:
    out.append(("guidance", jax.ShapeDtypeStruct((b,), jnp.float32)))
  return out


def sampler_fn(model: inference.Model, treedef):
  """`(flat_params, eps[, cond][, w]) -> images`, the exported function."""
  student, teacher = model.student, model.teacher
  has_cond = teacher.condition.kind != "none"

  def fn(flat, eps, *rest):
    params = jax.tree.unflatten(treedef, flat)
    cond = rest[0] if has_cond else None
    w = rest[-1] if model.guided else None
    return teacher.to_pixels(student.generate(params, eps, cond, w))

  return fn


def export_sampler(model: inference.Model, params, batch=None, platforms=None):
  """The serialized artifact, the flat parameters and the input signature."""
  flat, treedef = jax.tree.flatten(jax.device_get(params))
  flat = [np.asarray(p) for p in flat]
  inputs = _inputs(model, batch)
  specs = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in flat]
  fn = jax.jit(sampler_fn(model, treedef))
  exported = jax.export.export(fn, platforms=platforms)(
    specs, *(s for _, s in inputs)
  )
  return exported.serialize(), flat, inputs


def _signature(model, inputs, step: int, platforms) -> dict:
  def dims(s):
    return [d if isinstance(d, int) else str(d) for d in s.shape]

  return dict(
    checkpoint_step=step,
    platforms=list(platforms),
    inputs=[
      dict(name=n, shape=dims(s), dtype=str(np.dtype(s.dtype)))
      for n, s in inputs
    ],
    output=dict(
      name="images",
      shape=["b", *model.teacher.pixel_shape],
      range="[-1, 1]" if model.teacher.is_image else "unbounded",
    ),
  )


# What loading the artifact imports (jax.export reads the serialized
# module with flatbuffers, which jax does not install itself); the export
# test runs the README's code in an environment holding only these.
REQUIREMENTS = ("jax", "numpy", "flatbuffers")

README = """# Exported one-step sampler

Made by `python -m boot_jax.export` from the work directory `{workdir}`
(checkpoint step {step}), lowered for: {platforms}. It runs without
boot_jax; the Python packages it needs:

    pip install {requirements}

```python
import numpy as np
from jax import export

exp = export.deserialize(bytearray(open("sampler.jax", "rb").read()))
weights = np.load("params.npz")
params = [weights[f"p{{i:05d}}"] for i in range(len(weights.files))]
rng = np.random.default_rng(0)
{example}
images = np.asarray(exp.call(params, {args}))
```

Inputs (after `params`): {inputs}. Output: `images` of shape
{out_shape}, {range_note}. The batch dimension `b` is {batch_note}.
{family}"""


def _readme(model, inputs, workdir, step, platforms, batch) -> str:
  lines = []
  for name, s in inputs:
    shape = ", ".join(
      ["16" if not isinstance(d, int) else str(d) for d in s.shape]
    )
    if name == "eps":
      lines.append(f"eps = rng.standard_normal(({shape})).astype(np.float32)")
    elif name == "labels":
      n = model.teacher.condition.num_classes
      lines.append(f"labels = np.arange(16, dtype=np.int32) % {n}")
    elif name == "text":
      lines.append(
        f"text = np.zeros(({shape}), np.float32)  # the teacher's text "
        "encoder's embeddings"
      )
    elif name == "guidance":
      w = model.default_guidance()
      lines.append(f"guidance = np.full((16,), {w:g}, np.float32)")
  extra = model.teacher.export_readme()
  return README.format(
    # The folder's name only: no path of the training machine leaves it.
    workdir=paths.basename(paths.abspath(workdir).rstrip("/")),
    requirements=" ".join(REQUIREMENTS),
    family=f"\n{extra.strip()}\n" if extra.strip() else "",
    step=step,
    platforms=", ".join(platforms),
    example="\n".join(lines),
    args=", ".join(n for n, _ in inputs),
    inputs=", ".join(
      f"`{n}` {tuple(str(d) for d in s.shape)} {np.dtype(s.dtype)}"
      for n, s in inputs
    ),
    out_shape=f"`(b, {', '.join(map(str, model.teacher.pixel_shape))})`",
    range_note=(
      "float32 in [-1, 1]" if model.teacher.is_image else "float32 vectors"
    ),
    batch_note="symbolic: any size" if batch is None else f"fixed at {batch}",
  )


def check_out(out: str, overwrite: bool, workdir: str | None = None) -> bool:
  """Refuses an `--out` the export may not write; True when it replaces.

  Only an earlier export folder (its signature.json, nothing else in it)
  is replaced, and only with `--overwrite`; never the work directory, a
  folder above or inside it, the current or a home directory (guards.py).
  """
  existed = guards.check_replace_dir(out, guards.EXPORT, workdir=workdir)
  if existed and not overwrite:
    raise ExportError(
      f"--out {out} holds an earlier export; pass --overwrite to replace it"
    )
  if paths.is_remote(out):
    paths.check_writable(out)
    return existed
  parent = os.path.dirname(os.path.abspath(out))
  if os.path.exists(parent) and not os.access(parent, os.W_OK):
    raise ExportError(f"cannot write into {parent}")
  return existed


def export(
  workdir: str,
  out: str,
  batch=None,
  platforms=None,
  dtype: str = "float32",
  overwrite: bool = False,
  printer=print,
) -> list[str]:
  """Exports `workdir`'s student into `out`; returns the files written."""
  existed = check_out(out, overwrite, workdir)
  if batch is not None and batch < 1:
    raise ExportError(f"--batch must be >= 1, got {batch}")
  platforms = tuple(platforms or DEFAULT_PLATFORMS)
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad:
    raise ExportError(f"unknown platform {bad[0]!r}; expected {PLATFORMS}")
  # Blocked attention is plain XLA, so one artifact serves every platform
  # (cuDNN's and Pallas' kernels are tied to one).
  model, params, step = inference.load(
    workdir, inference.mesh_from_spec("data=1"), dtype, attention="chunked"
  )
  if model.student is None:
    raise ExportError(f"{workdir} is a teacher work directory: no student")
  printer(f"export: lowering the one-step sampler for {', '.join(platforms)}")
  blob, flat, inputs = export_sampler(model, params, batch, platforms)
  out = paths.abspath(out)
  remote = paths.is_remote(out)
  parent = tempfile.gettempdir() if remote else os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
  try:
    with open(os.path.join(tmp, "sampler.jax"), "wb") as f:
      f.write(blob)
    np.savez(
      os.path.join(tmp, "params.npz"),
      **{f"p{i:05d}": p for i, p in enumerate(flat)},
    )
    with open(os.path.join(tmp, "README.md"), "w") as f:
      f.write(_readme(model, inputs, workdir, step, platforms, batch))
    files = ["sampler.jax", "params.npz", "README.md"]
    files += model.teacher.export_extras(tmp, model.student, params)
    files.append("signature.json")
    # The marker last: it lists what the export wrote (guards.py).
    sig = _signature(model, inputs, step, platforms)
    sig["files"] = files
    with open(os.path.join(tmp, "signature.json"), "w") as f:
      json.dump(sig, f, indent=2)
    if remote:
      _upload(tmp, out, existed)
      return files
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private
    guards.replace_dir(tmp, out, existed)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    if remote:
      shutil.rmtree(tmp, ignore_errors=True)
  return files


def _upload(local_dir: str, out: str, existed: bool) -> None:
  """Uploads an export folder; `signature.json` goes last.

  An object store has no atomic folder rename: readers look for
  `signature.json` first, so it is written only once every other file is
  complete, and a failed upload deletes what it wrote.
  """
  names = []
  for root, _, fs in os.walk(local_dir):
    for name in fs:
      rel = os.path.relpath(os.path.join(root, name), local_dir)
      names.append(rel.replace(os.sep, "/"))
  names.sort(key=lambda n: (n == "signature.json", n))
  if existed:  # an earlier export, checked by guards.check_replace_dir
    paths.rmtree(out)
  try:
    for rel in names:
      paths.put_file(os.path.join(local_dir, rel), paths.join(out, rel))
  except BaseException:
    paths.rmtree(out)
    raise
