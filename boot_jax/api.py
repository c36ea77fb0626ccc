"""The Python API: a trained work directory in a notebook or a service.

    import boot_jax

    run = boot_jax.load("/tmp/boot_digits")          # any devices, any mesh
    images = run.sample(16, seed=0)                  # one network call
    reference = run.teacher_sample(16, seed=0, steps=50)
    run.export("/tmp/boot_digits_export")

`sample` returns what `python -m boot_jax.sample` writes as `images`, bit
for bit for the same arguments (the same noise, batches and programs):
numpy float32, NHWC in [-1, 1] (or `[N, D]` vectors). Only the parameters
are read from the checkpoint (EMA when kept), never the optimizer state.
"""

from __future__ import annotations

import numpy as np

from boot_jax.data import prompts as prompts_lib
from boot_jax.sampling import export as export_lib
from boot_jax.sampling import inference, samplers


class Run:
  """A work directory loaded for sampling and export.

  Args:
    workdir: a BOOT or teacher work directory (local or `gs://`).
    mesh: a device layout such as "data=1,fsdp=4" (None: the batch over
      every local device, as the programs do).
    dtype: the networks' computation dtype, "float32" or "bfloat16".

  Attributes:
    workdir, step: the directory and the checkpoint step loaded.
    model, params: the teacher and student on the mesh, and the parameters.
  """

  def __init__(self, workdir: str, mesh: str | None = None, dtype="float32"):
    self.workdir = workdir
    self.dtype = dtype
    self.model, self.params, self.step = inference.load(
      workdir, inference.mesh_from_spec(mesh), dtype
    )

  def __repr__(self) -> str:
    kind = "BOOT" if self.model.student is not None else "teacher"
    return f"boot_jax.Run({self.workdir!r}, {kind}, step {self.step})"

  def sample(
    self,
    num: int = 64,
    seed: int = 0,
    prompt=None,
    label=None,
    guidance: float | None = None,
    noise=None,
    sampler: str | None = None,
    steps: int = 50,
    batch_size: int = 256,
    allow_extrapolation: bool = False,
  ) -> np.ndarray:
    """Images (or vectors) as a numpy array.

    Args:
      num: how many (ignored when `noise` is given: one per row).
      seed: the noise seed (`sample --seed`; image i uses noise row i).
      prompt: a prompt or a list of them, cycled (text teachers).
      label: a class label or a list of them, cycled.
      guidance: the guidance w (None: the run's trained w).
      noise: eps rows `[N, *sample_shape]` to use instead of the seed's.
      sampler: 'student' (default for a BOOT run), 'teacher' or 'hybrid'.
      steps: the teacher's DDIM steps (teacher and hybrid samplers).
      batch_size: examples per network call.
      allow_extrapolation: guidance beyond a guidance-conditioned
        student's range.
    """
    if noise is not None:
      noise = np.asarray(noise, np.float32)
      shape = tuple(self.model.teacher.sample_shape)
      if noise.ndim != len(shape) + 1 or noise.shape[1:] != shape:
        raise ValueError(
          f"noise has shape {noise.shape}; expected [N, "
          f"{', '.join(map(str, shape))}]"
        )
      if not np.all(np.isfinite(noise)):
        raise ValueError("noise holds NaN or infinite values")
      num = len(noise)
    if num < 1:
      raise ValueError(f"num must be >= 1, got {num}")
    out = []
    samplers.run(
      self.model,
      self.params,
      lambda start, eps, smp, pixels: out.append(np.asarray(pixels)),
      num=num,
      seed=seed,
      kind=sampler,
      steps=steps,
      guidance=guidance,
      allow_extrapolation=allow_extrapolation,
      noise_rows=None if noise is None else (lambda s, n: noise[s : s + n]),
      labels=_listed(label),
      texts=_listed(prompt),
      batch_size=batch_size,
    )
    return np.concatenate(out).astype(np.float32)[:num]

  def teacher_sample(self, num: int = 64, seed: int = 0, steps: int = 50, **kw):
    """The teacher's DDIM with `steps` steps on the same noise as `sample`."""
    return self.sample(num, seed, sampler="teacher", steps=steps, **kw)

  def export(self, out: str, overwrite: bool = False, **kw) -> list[str]:
    """`python -m boot_jax.export` into `out`; returns the files written."""
    return export_lib.export(
      self.workdir, out, dtype=self.dtype, overwrite=overwrite, **kw
    )


def _listed(value):
  if value is None or isinstance(value, (list, tuple)):
    return None if value is None else list(value)
  return [value]


def load(workdir: str, mesh: str | None = None, dtype: str = "float32") -> Run:
  """A work directory loaded for sampling and export (see `Run`)."""
  return Run(workdir, mesh, dtype)


def read_prompts(path: str) -> list[str]:
  """The prompts of a prompt file (.txt, .jsonl, .csv, .parquet)."""
  return prompts_lib.read_prompts(path)
