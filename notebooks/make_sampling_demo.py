r"""Writes notebooks/sampling_demo.ipynb from the cells below, and runs it.

    python notebooks/make_sampling_demo.py            # write, no outputs
    python notebooks/make_sampling_demo.py --execute  # write and run it
        [--fast] [--timeout 3600]

The committed notebook is the `--execute` output of a real run (so its
page shows the figures). Edit the cells here, not in the .ipynb.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOK = HERE / "sampling_demo.ipynb"
# Where the repository lives (the Colab badge and the set-up cell).
REPO = "boot-jax/boot_jax"

CELLS = []


def md(text: str) -> None:
  CELLS.append(nbformat.v4.new_markdown_cell(text.strip()))


def code(text: str, tags=()) -> None:
  cell = nbformat.v4.new_code_cell(text.strip())
  if tags:
    cell.metadata["tags"] = list(tags)
  CELLS.append(cell)


md(f"""
# One-step sampling with a BOOT student

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPO}/blob/main/notebooks/sampling_demo.ipynb)

BOOT distils a diffusion model (the teacher) into a generator that samples
in **one network call**, without any training data: the student
`g(eps, t)` reads only Gaussian noise and learns to predict the whole
deterministic DDIM trajectory of the teacher that starts at `eps`. This
notebook trains two small students (or loads yours), then shows what one
step gives, the student's whole trajectory, its speed, the quality dial
between one step and the teacher, and noise interpolation.

Runs on a CPU, one GPU or a TPU runtime. Set `FAST = True` for a run of a
few minutes on a laptop CPU: it loads the demo's trained digits run that
ships with this notebook (`notebooks/digits_run`) instead of training one.
""")

code(
  """
# Parameters (papermill style: a tool may overwrite this cell).
FAST = False  # True: the shipped digits run (a few minutes on 2 CPU cores)
WORKDIR = ""  # an existing BOOT work directory ("" trains the demos below)
LABEL = None  # for a class-conditional student: the class to draw
GUIDANCE = None  # for a guided student: the guidance scale w
SD_FOLDER = ""  # optional: a diffusers Stable Diffusion folder ...
SD_WORKDIR = ""  # ... and a BOOT work directory distilled from it
PROMPTS = ["a red apple on a table", "a lighthouse at dusk"]
OUT = "/tmp/boot_jax_notebook"  # where the demo runs are written
""",
  tags=("parameters",),
)

md("## Set-up")

code(
  f"""
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("boot_jax") is not None:
  print("boot_jax is installed: skipping the set-up")
else:
  # The project, with the jax build for this runtime's accelerator.
  if os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ:
    extra = "[tpu]"
  elif subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0:
    extra = "[cuda]"
  else:
    extra = ""
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q",
     f"boot_jax{{extra}} @ git+https://github.com/{REPO}"],
    check=True,
  )

import jax

print("devices:", jax.devices())
"""
)

code(
  """
def stop(message):
  # Ends the run at this cell with one readable line.
  raise SystemExit(f"error: {message}")


if WORKDIR and not os.path.isfile(os.path.join(WORKDIR, "config.json")):
  stop(f"WORKDIR={WORKDIR!r} does not exist or is not a work directory")
if bool(SD_FOLDER) != bool(SD_WORKDIR):
  stop("set both SD_FOLDER and SD_WORKDIR, or neither")
if SD_FOLDER and not os.path.isdir(os.path.join(SD_FOLDER, "unet")):
  stop(
    f"SD_FOLDER={SD_FOLDER!r} has no unet/ folder: not a diffusers "
    "Stable Diffusion folder"
  )
print("parameters ok")
"""
)

md("""
## A student

By default: BOOT on the analytic Gaussian mixture (its teacher is exact,
so the student can be checked against the true DDIM map) and on a small
UNet teacher of scikit-learn's 8x8 digits (the teacher is trained here
first, on the digits; the student never reads them). With `FAST`, the
digits run is the demo's (`configs/digits.py`: BOOT, then the refinement
phase), shipped in `notebooks/digits_run` (parameters only, made by
`notebooks/make_digits_run.py`). With `WORKDIR` set, your run is loaded
instead, on this runtime's devices whatever mesh trained it. Each run is
opened with `boot_jax.load`, the Python API.
""")

code(
  """
import time

import matplotlib.pyplot as plt
import numpy as np
from absl import logging

import boot_jax
from boot_jax.config import recipes
from boot_jax.runtime import workdir as workdir_lib
from boot_jax.sampling import inference, samplers
from boot_jax.training import boot_run, teacher_run

logging.set_verbosity(logging.ERROR)  # orbax's notes on read-only restores


def quiet(line):
  del line


def distil_mixture(work):
  config = recipes.gmm_config("circle")
  config.train.steps = 300 if FAST else 3000
  config.train.log_every = config.train.steps
  config.eval.final = False
  boot_run.train_and_evaluate(config, work, printer=quiet)


def distil_digits(work):
  teacher = recipes.digits_teacher_config()
  teacher.train.steps = 300 if FAST else 3000
  teacher.train.log_every = teacher.train.steps
  teacher_dir = os.path.join(work, "teacher")
  teacher_run.train_and_evaluate(teacher, teacher_dir, printer=quiet)
  config = recipes.digits_boot_config()
  config.teacher.path = teacher_dir
  config.train.steps = 150 if FAST else 2000
  config.train.log_every = config.train.steps
  config.eval.final = False
  boot_run.train_and_evaluate(config, work, printer=quiet)


def shipped_digits_run():
  # The demo's run, shipped beside this notebook in a checkout.
  root = os.path.dirname(os.path.dirname(os.path.abspath(boot_jax.__file__)))
  path = os.path.join(root, "notebooks", "digits_run")
  return path if os.path.isfile(os.path.join(path, "config.json")) else None


runs = {}
if WORKDIR:
  runs["yours"] = WORKDIR
else:
  for name, fn in (("mixture", distil_mixture), ("digits", distil_digits)):
    if name == "digits" and FAST and shipped_digits_run():
      runs[name] = shipped_digits_run()
      print("digits: the demo's trained run, shipped in notebooks/digits_run")
      continue
    t0 = time.perf_counter()
    work = os.path.join(OUT, "fast" if FAST else "full", name)
    fn(work)
    print(f"{name}: distilled in {time.perf_counter() - t0:.0f} s -> {work}")
    runs[name] = work

loaded, models = {}, {}
for name, work in runs.items():
  loaded[name] = boot_jax.load(work)  # the Python API: any devices, any mesh
  model = loaded[name].model
  models[name] = (model, loaded[name].params)
  s = model.student
  print(
    f"{name}: {model.teacher.name} teacher, {s.condition.kind} condition, "
    f"grid N={model.grid.num_steps}, checkpoint step {loaded[name].step}"
  )
"""
)

md("""
## What one step gives

The student's one network call next to the teacher's DDIM with 50 steps,
from the **same noise**: the student learned the map eps -> DDIM sample.
""")

code(
  """
def conditions(model, num):
  labels = None if LABEL is None else [LABEL]
  return samplers.Conditions(model, labels=labels).rows(0, num)


def guidance(model):
  return samplers.resolve_guidance(model, GUIDANCE, "student")


def run(model, params, kind, steps, eps, cond):
  # The batch is split over the devices: pad it to a multiple of them.
  fn = samplers.jit_on_mesh(
    model, samplers.make_sampler(model, params, kind, steps, guidance(model))
  )
  n, shards = len(eps), model.mesh.devices.size
  rows = -(-n // shards) * shards
  def pad(a):
    return None if a is None else samplers.pad_rows(a, rows)

  return model.teacher.pixels(np.asarray(fn(pad(eps), pad(cond)))[:n], 64)


def to_rgb(img):
  img = (np.asarray(img) + 1) / 2
  return img[..., 0] if img.shape[-1] == 1 else img


def show(ax, x, title, model):
  if model.teacher.is_image:
    ax.imshow(workdir_lib.image_grid(x), cmap="gray")
    ax.axis("off")
  else:
    ax.scatter(x[:, 0], x[:, 1], s=2)
    ax.set_aspect("equal")
  ax.set_title(title)


for name, api in loaded.items():
  model = api.model
  num = 64 if model.teacher.is_image else 2000
  # The Python API: the same noise (seed) for the student and the teacher.
  one = api.sample(num, seed=0, label=LABEL, guidance=GUIDANCE)
  ddim = api.teacher_sample(num, seed=0, steps=50, label=LABEL,
                            guidance=GUIDANCE)
  fig, axes = plt.subplots(1, 2, figsize=(8, 4))
  show(axes[0], one, f"{name}: student, 1 step", model)
  show(axes[1], ddim, f"{name}: teacher DDIM 50", model)
  plt.show()
  print(f"{name}: mean |student - DDIM-50| = {np.abs(one - ddim).mean():.4f}")
"""
)

md("""
## The whole trajectory from one call

`g(eps, t)` predicts the DDIM trajectory's signal at any time `t`, so the
student gives `x_t` at 8 times in **one batched call** (top), next to the
teacher's DDIM over the student's training grid (bottom).
""")

code(
  """
for name, (model, params) in models.items():
  grid, teacher, w = model.grid, model.teacher, guidance(model)
  n = grid.num_steps
  idx = np.unique(np.round(np.linspace(n, 0, 8)).astype(int))[::-1]
  ts = grid.times[idx]
  num = 4 if teacher.is_image else 400
  eps = inference.noise(teacher.sample_shape, num, seed=1)
  cond = conditions(model, num)
  wv = w if model.guided else None
  student_xs = np.asarray(model.student.trajectory(params, eps, ts, cond, wv))
  _, xs = teacher.ddim(
    teacher.params, eps, grid.ddim_timesteps(), cond, w,
    return_trajectory=True,
  )
  xs = np.concatenate([np.asarray(eps)[None], np.asarray(xs)])
  teacher_xs = xs[n - idx]  # xs[k]: after k steps, at grid.times[n - k]
  if teacher.is_image:
    fig, axes = plt.subplots(2, len(ts), figsize=(1.4 * len(ts), 3.2))
    for j in range(len(ts)):
      for row, traj in enumerate((student_xs, teacher_xs)):
        img = teacher.pixels(traj[j][:1])[0]
        axes[row, j].imshow(to_rgb(img), cmap="gray", vmin=0, vmax=1)
        axes[row, j].axis("off")
      when = "clean" if idx[j] == 0 else f"t={ts[j]:.0f}"
      axes[0, j].set_title(when, fontsize=8)
    axes[0, 0].text(-4, 4, "student", rotation=90, fontsize=8)
    axes[1, 0].text(-4, 4, "teacher", rotation=90, fontsize=8)
  else:
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, traj, title in (
      (axes[0], student_xs, "student: x_t from one call"),
      (axes[1], teacher_xs, "teacher: DDIM steps"),
    ):
      for k in range(40):
        ax.plot(traj[:, k, 0], traj[:, k, 1], lw=0.7)
      ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, c="k")
      ax.set_aspect("equal")
      ax.set_title(f"{name}: {title}")
  plt.show()
  axes_ = tuple(range(1, student_xs.ndim))
  gap = np.abs(student_xs - teacher_xs).mean(axis=axes_)
  print(f"{name}: mean |student - teacher| per time:", np.round(gap, 4))
"""
)

md("""
## Speed

Images per second of the student's one call and of the teacher's DDIM
with 4, 10 and 50 steps, compiled, at the same batch, on this runtime's
device. (The mixture's teacher is a closed-form formula, cheaper than the
student's small network, so there the student is not faster: the point
of BOOT is teachers that are networks.)
""")

code(
  """
def images_per_s(model, params, kind, steps, batch, repeats):
  shape = model.teacher.sample_shape
  eps = inference.noise(shape, batch, seed=2)
  cond = conditions(model, batch)
  fn = samplers.jit_on_mesh(
    model, samplers.make_sampler(model, params, kind, steps, guidance(model))
  )
  jax.block_until_ready(fn(eps, cond))  # compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(eps, cond))
    times.append(time.perf_counter() - t0)
  return batch / float(np.median(times))


speed = {}
for name, (model, params) in models.items():
  batch = 64 if FAST else 256
  rows = {"student, 1 step": ("student", 1)}
  rows.update({f"DDIM {k}": ("teacher", k) for k in (4, 10, 50)})
  speed[name] = {
    label: images_per_s(model, params, kind, k, batch, 3 if FAST else 10)
    for label, (kind, k) in rows.items()
  }
  fig, ax = plt.subplots(figsize=(6, 2.5))
  ax.barh(list(speed[name]), list(speed[name].values()))
  ax.set_xscale("log")
  ax.set_xlabel(f"images/s ({jax.devices()[0].platform}, batch {batch})")
  ax.set_title(name)
  plt.show()
  ratio = speed[name]["student, 1 step"] / speed[name]["DDIM 50"]
  print(f"{name}: the student is {ratio:.1f}x faster than DDIM-50")
"""
)

md("""
## The quality dial

The hybrid sampler lets the student jump to the first point of the last
K steps of its grid and the teacher finish them: K = 0 is the student
alone, K = N the teacher's DDIM-N. Quality against network calls: for
the digits, the Frechet distance in a small digits classifier's feature
space (lower is better); for the mixture, the fraction of samples that
land in the same component as the teacher's DDIM-N (higher is better).
""")

code(
  """
from boot_jax.evaluation import digits_classifier
from boot_jax.teachers import gmm


def mixture_quality(model, params, eps, cond):
  # Agreement with the teacher's DDIM over the student's grid (DDIM-N).
  p = model.teacher.params
  ddim_n = run(model, params, "teacher", model.grid.num_steps, eps, cond)
  target = np.asarray(gmm.assign(p, ddim_n))

  def quality(x):
    return float(np.mean(np.asarray(gmm.assign(p, x)) == target))

  return quality, "agreement with DDIM-N (higher is better)"


def fid_quality(reference):
  # FID-digits: the Frechet distance in the features of the small
  # classifier that the runs' own evaluation uses (eval.json), to the
  # real digits (trained once, then cached).
  net = digits_classifier.train_classifier(reference, printer=quiet)
  real = digits_classifier.gaussian(net.features(reference.images))

  def quality(x):
    fake = digits_classifier.gaussian(net.features(x))
    return digits_classifier.frechet_distance(*real, *fake)

  return quality, "FID-digits (lower is better)"


for name, (model, params) in models.items():
  teacher, n = model.teacher, model.grid.num_steps
  num = 500 if FAST else 2000
  eps = inference.noise(teacher.sample_shape, num, seed=3)
  cond = conditions(model, num)
  ks = [0, 1, n] if FAST else sorted({0, 1, 2, 4, n // 2, n})
  reference = teacher.reference_data()
  if teacher.evaluation == "mixture":
    quality, label = mixture_quality(model, params, eps, cond)
  elif reference is not None:
    quality, label = fid_quality(reference)
  else:
    print(f"{name}: no reference for quality; skipped")
    continue
  hybrid = [
    quality(run(model, params, "hybrid" if k else "student", max(k, 1), eps,
                cond))
    for k in ks
  ]
  steps = [k for k in ks if k]
  ddim = [quality(run(model, params, "teacher", k, eps, cond)) for k in steps]
  fig, ax = plt.subplots(figsize=(5, 3))
  ax.plot([1 + k for k in ks], hybrid, "o-", label="student + K teacher steps")
  ax.plot(steps, ddim, "s--", label="teacher DDIM-K")
  ax.set_xscale("log")
  ax.set_xlabel("network calls")
  ax.set_ylabel(label)
  ax.set_title(name)
  ax.legend()
  plt.show()
  print(f"{name}: K = {ks}: " + ", ".join(f"{q:.3f}" for q in hybrid))
"""
)

md("""
## Noise interpolation

A spherical interpolation between two noises, each point through the
student's one step: the student's map is smooth in `eps`.
""")

code(
  """
def slerp(a, b, u):
  cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  return (np.sin((1 - u) * omega) * a + np.sin(u * omega) * b) / np.sin(omega)


for name, (model, params) in models.items():
  teacher = model.teacher
  a, b = np.asarray(inference.noise(teacher.sample_shape, 2, seed=4))
  us = np.linspace(0, 1, 8)
  eps = np.stack([slerp(a, b, u) for u in us]).astype(np.float32)
  out = run(model, params, "student", 1, eps, conditions(model, len(us)))
  if teacher.is_image:
    fig, axes = plt.subplots(1, len(us), figsize=(1.2 * len(us), 1.4))
    for ax, img in zip(axes, out, strict=True):
      ax.imshow(to_rgb(img), cmap="gray", vmin=0, vmax=1)
      ax.axis("off")
  else:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(out[:, 0], out[:, 1], "o-")
    ax.set_aspect("equal")
  fig.suptitle(f"{name}: slerp between two noises, one step each")
  plt.show()
"""
)

md("""
## Text to image (optional)

Set `SD_FOLDER` (a diffusers Stable Diffusion folder) and `SD_WORKDIR` (a
BOOT work directory distilled from it, e.g. with `configs/sd15.py`) to
draw one-step images from prompts.
""")

code(
  """
if SD_FOLDER and SD_WORKDIR:
  model, params, step = inference.load(SD_WORKDIR)
  teacher = model.teacher
  eps = inference.noise(teacher.sample_shape, len(PROMPTS), seed=5)
  cond = np.asarray(teacher.encode_text(PROMPTS))
  images = run(model, params, "student", 1, eps, cond)
  fig, axes = plt.subplots(1, len(PROMPTS), figsize=(4 * len(PROMPTS), 4))
  panels = zip(np.atleast_1d(axes), images, PROMPTS, strict=True)
  for ax, img, prompt in panels:
    ax.imshow(to_rgb(img))
    ax.set_title(prompt, fontsize=9)
    ax.axis("off")
  plt.show()
else:
  print("skipped: set SD_FOLDER and SD_WORKDIR to draw from prompts")
"""
)


def build(fast: bool = False):
  nb = nbformat.v4.new_notebook(cells=[c.copy() for c in CELLS])
  nb.metadata["kernelspec"] = {
    "name": "python3",
    "display_name": "Python 3",
    "language": "python",
  }
  nb.metadata["colab"] = {"provenance": []}
  if fast:
    set_parameters(nb, FAST=True)
  return nb


def set_parameters(nb, **values) -> None:
  """Rewrites assignments in the parameters cell (`NAME = value`)."""
  cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  lines = cell.source.splitlines()
  for name, value in values.items():
    for i, line in enumerate(lines):
      if line.startswith(f"{name} = "):
        comment = line.split("#", 1)[1] if "#" in line else ""
        lines[i] = f"{name} = {value!r}" + (f"  #{comment}" if comment else "")
  cell.source = "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--execute", action="store_true")
  parser.add_argument("--fast", action="store_true")
  parser.add_argument("--timeout", type=int, default=3600)
  args = parser.parse_args()
  nb = build(args.fast)
  if args.execute:
    import nbclient  # noqa: PLC0415

    nbclient.NotebookClient(
      nb, timeout=args.timeout, kernel_name="python3"
    ).execute()
    if args.fast:
      set_parameters(nb, FAST=False)  # the committed default
  nbformat.write(nb, NOTEBOOK)
  # The cells above are written compactly; ruff formats them in place.
  subprocess.run(["ruff", "format", "-q", str(NOTEBOOK)], check=False)
  print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
  main()
