"""Exporting a Stable Diffusion student as a diffusers (PyTorch) folder.

A tiny random SD folder (boot_jax/testing.py) is the teacher; the
student's weights are the teacher's perturbed, so the comparison fails if
the export carried the teacher's weights (or none) instead of the
student's. The exported `one_step.py`, run by PyTorch, must give the JAX
student's one step decoded by `sd_teacher.decode` on the same latents and
prompts.
"""

import importlib.util
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import perturbed_student

from boot_jax import teachers, testing
from boot_jax.config import defaults
from boot_jax.distill import student as student_lib
from boot_jax.teachers.sd import export, sd_teacher
from boot_jax.teachers.sd import loading as sd_loading

torch = pytest.importorskip("torch")

PROMPTS = ["a red square", "", "a blue circle"]


def _teacher(path):
  return teachers.build_teacher(
    ml_collections.ConfigDict(
      dict(name="sd", path=str(path), resolution=16, prediction=None)
    )
  )


def _import(path):
  spec = importlib.util.spec_from_file_location(f"one_step_{id(path)}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "prediction,guided", [("epsilon", False), ("v_prediction", True)]
)
def test_one_step_matches_the_jax_student(tmp_path, prediction, guided):
  testing.make_folder(tmp_path, prediction)
  folder = tmp_path / "sd"
  teacher = _teacher(folder)
  student, params = perturbed_student(teacher, guided)
  assert student.parameterization == (
    "direct" if prediction == "epsilon" else "teacher"
  )
  out = tmp_path / "export"
  meta = export.export_diffusers(str(folder), params, student, str(out))

  from diffusers import StableDiffusionPipeline, UNet2DConditionModel

  unet, info = UNet2DConditionModel.from_pretrained(
    out / "unet", output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
  assert json.loads((out / "boot_student.json").read_text()) == meta
  assert meta["t_clean"] == -1 and meta["t_max"] == 999
  # set_alpha_to_one=False: the clean end is alphas_cumprod[0], not 1.
  assert 0.999 < meta["alpha_clean"] < 1 and 0 < meta["sigma_clean"] < 0.03
  assert (out / "boot_guidance.safetensors").is_file() == guided
  # A complete diffusers folder (its UNet is the one-step student).
  StableDiffusionPipeline.from_pretrained(out, safety_checker=None)

  rng = np.random.default_rng(0)
  eps = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
  parts = teacher.parts
  cond = sd_teacher.encode_prompts(parts, PROMPTS)
  w = 3.0 if guided else None
  latents = student.generate(params, jnp.asarray(eps), cond, w)
  ref = np.clip(np.asarray(sd_teacher.decode(parts, latents)), -1.0, 1.0)
  # The teacher's weights give other images: the student's were carried.
  teacher_latents = student.generate(
    _unperturbed(teacher, guided, params), jnp.asarray(eps), cond, w
  )
  far = np.clip(
    np.asarray(sd_teacher.decode(parts, teacher_latents)), -1.0, 1.0
  )
  assert np.abs(far - ref).max() > 1e-2

  one_step = _import(out / "one_step.py")
  images = one_step.one_step(
    str(out), PROMPTS, eps.transpose(0, 3, 1, 2), guidance=w
  )
  ours = images.numpy().transpose(0, 2, 3, 1)
  assert ours.shape == ref.shape == (3, 16, 16, 3)
  # float32 on both sides, but XLA and PyTorch use different convolution
  # and attention kernels (other summation orders): a few ulp per layer
  # through the text encoder, ~20 UNet layers and the VAE (test_sd: UNet
  # within 1e-4, measured ~3e-6).
  err = float(np.abs(ours - ref).max())
  print(f"{prediction} guided={guided}: max abs {err:.2e} on [-1, 1] pixels")
  assert err <= 1e-4, err
  if guided:
    # w reaches the UNet through the time embedding hook.
    other = one_step.one_step(
      str(out), PROMPTS, eps.transpose(0, 3, 1, 2), guidance=0.0
    ).numpy()
    assert np.abs(other.transpose(0, 2, 3, 1) - ours).max() > 1e-3
    with pytest.raises(ValueError, match="guidance-conditioned"):
      one_step.one_step(str(out), PROMPTS, eps.transpose(0, 3, 1, 2))


def _unperturbed(teacher, guided, params):
  """The teacher's weights in the student's tree."""
  if not guided:
    return teacher.params
  return dict(params, unet=teacher.params["unet"])


def test_export_refuses_pickles_and_non_empty_folders(tmp_path):
  testing.make_folder(tmp_path)
  folder = tmp_path / "sd"
  teacher = _teacher(folder)
  student, _ = student_lib.build_student(
    teacher, defaults.base_config().student, jax.random.key(0)
  )
  params = teacher.params
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "x").write_text("")
  with pytest.raises(ValueError, match="not empty"):
    export.export_diffusers(str(folder), params, student, str(busy))
  vae = folder / "vae"
  (vae / "diffusion_pytorch_model.safetensors").rename(
    vae / "diffusion_pytorch_model.bin"
  )
  with pytest.raises(sd_loading.SDError, match="pickles and are not read"):
    export.export_diffusers(str(folder), params, student, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
