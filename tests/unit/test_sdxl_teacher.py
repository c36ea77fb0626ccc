"""Stable Diffusion XL teachers: parity with diffusers' PyTorch pipeline.

A tiny random SDXL folder (`testing.make_xl_folder`: SDXL's layout in
small, saved by `StableDiffusionXLPipeline.save_pretrained`) is loaded
through our loader. Tolerances (float32), as tests/integration/test_sd.py
states them: the UNet's x0 within 1e-4 in the native output's units (XLA
and PyTorch sum convolutions and attention in other orders); CLIP text
embeddings (both encoders' penultimate states, the pooled projection)
within 1e-5; the guided DDIM-10 image and the exported one-step function
within 1e-3 and 1e-4 on [-1, 1] pixels (the acceptance bars).
"""

import json
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import perturbed_student

from boot_jax import teachers, testing
from boot_jax.teachers.sd import export, sd_teacher
from boot_jax.teachers.sd import loading as sd_loading
from boot_jax.teachers.sdxl import sdxl_teacher

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a red square", "", "a blue circle"]
LENGTH, POOLED = 77, 24  # the tiny folder's token length and pooled width


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("xl")
  pipe = testing.make_xl_folder(path)
  return path / "sdxl", pipe


def _teacher(path, **fields):
  section = dict(
    name="sdxl",
    path=str(path),
    resolution=16,
    prediction=None,
    negative_prompt="",
    original_size=None,
    crop_top_left=(0, 0),
  )
  return teachers.build_teacher(
    ml_collections.ConfigDict({**section, **fields})
  )


def test_text_conditioning_matches_the_pipeline(folder):
  """The packed condition holds `encode_prompt`'s two outputs; the empty
  negative prompt's is zero (`force_zeros_for_empty_prompt`), or the
  encoded negative prompt when one is set."""
  path, pipe = folder
  teacher = _teacher(path)
  assert teacher.condition.shape == (LENGTH + 1, 64)
  assert teacher.module.micro == (
    LENGTH, POOLED, (16.0, 16.0, 0.0, 0.0, 16.0, 16.0)
  )  # fmt: skip
  ours = np.asarray(teacher.encode_text(PROMPTS))
  with torch.no_grad():
    text, neg, pooled, neg_pooled = pipe.encode_prompt(
      PROMPTS, device="cpu", do_classifier_free_guidance=True
    )
  got_text, got_pooled = sd_teacher.unpack_pooled(ours, LENGTH, POOLED)
  assert np.abs(np.asarray(got_text) - text.numpy()).max() <= 1e-5
  assert np.abs(np.asarray(got_pooled) - pooled.numpy()).max() <= 1e-5
  # The padding after the pooled row is zero.
  assert not np.asarray(ours[:, LENGTH:]).reshape(3, -1)[:, POOLED:].any()
  assert not neg.abs().max() and not neg_pooled.abs().max()
  assert not np.asarray(teacher.null_embedding).any()
  other = _teacher(path, negative_prompt="blue")
  with torch.no_grad():
    _, neg, _, neg_pooled = pipe.encode_prompt(
      ["a"], device="cpu", negative_prompt="blue"
    )
  null_text, null_pooled = sd_teacher.unpack_pooled(
    other.null_embedding[None], LENGTH, POOLED
  )
  assert np.abs(np.asarray(null_text) - neg.numpy()).max() <= 1e-5
  assert np.abs(np.asarray(null_pooled) - neg_pooled.numpy()).max() <= 1e-5


@pytest.mark.slow
def test_unet_and_guided_ddim_match_the_pipeline(folder):
  """x0 of the UNet with micro-conditioning, then the teacher's DDIM-10 at
  w = 7.5 against `StableDiffusionXLPipeline` with `DDIMScheduler.
  from_config` of the folder's (Euler) scheduler config, nothing
  overridden, from the same latents. Micro-conditioning other than the
  default (original size 32, crop (2, 4)) is checked on the UNet."""
  path, pipe = folder
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  t = np.array([999, 20], np.int32)
  for original, crop in ((None, (0, 0)), (32, (2, 4))):
    teacher = _teacher(path, original_size=original, crop_top_left=crop)
    cond = np.asarray(teacher.encode_text(PROMPTS[::2]))
    text, pooled = sd_teacher.unpack_pooled(cond, LENGTH, POOLED)
    ids = [original or 16, original or 16, *crop, 16, 16]
    with torch.no_grad():
      out = pipe.unet(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(t).long(),
        encoder_hidden_states=torch.from_numpy(np.array(text)),
        added_cond_kwargs=dict(
          text_embeds=torch.from_numpy(np.array(pooled)),
          time_ids=torch.tensor([ids, ids], dtype=torch.float32),
        ),
      ).sample.numpy()
    eps = np.asarray(teacher.output(teacher.params, x, t, cond))
    err = np.abs(eps - out.transpose(0, 2, 3, 1)).max()
    print(f"UNet micro-conditioning {ids}: max abs {err:.2e}")
    assert err <= 1e-4, (ids, err)

  teacher = _teacher(path)
  pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
  with torch.no_grad():
    ref = pipe(
      prompt=PROMPTS[::2],
      height=16,
      width=16,
      num_inference_steps=10,
      guidance_scale=7.5,
      latents=torch.from_numpy(x.transpose(0, 3, 1, 2)),
      output_type="np",
    ).images
  cond = teacher.encode_text(PROMPTS[::2])
  latents = teacher.ddim(
    teacher.params, x, teacher.ddim_timesteps(10), cond, 7.5
  )
  ours = np.asarray(teacher.to_pixels(latents))
  err = float(np.abs(ours - (ref * 2.0 - 1.0)).max())
  print(f"DDIM-10 at w = 7.5: max abs {err:.2e} on [-1, 1] pixels")
  assert err <= 1e-3, err


@pytest.mark.slow
def test_export_loads_in_the_xl_pipeline_and_one_step_matches(folder, tmp_path):
  """The exported folder loads in current `StableDiffusionXLPipeline`
  with no missing or unexpected UNet keys; its `one_step.py` equals the
  JAX student of a guidance-conditioned SDXL student (the w embedding,
  the pooled embedding and the time ids all reach the UNet), and the
  teacher's weights would give other images."""
  import importlib.util

  path, _ = folder
  teacher = _teacher(path, original_size=32)
  student, params = perturbed_student(teacher, guided=True)
  out = tmp_path / "export"
  meta = export.export_diffusers(
    str(path),
    params,
    student,
    str(out),
    check=sdxl_teacher.loading.check_folder,
    copied=sdxl_teacher.COPIED,
  )
  assert meta["micro_conditioning"] == dict(
    text_length=LENGTH,
    pooled_width=POOLED,
    time_ids=[32.0, 32.0, 0.0, 0.0, 16.0, 16.0],
  )
  unet, info = diffusers.UNet2DConditionModel.from_pretrained(
    out / "unet", output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  loaded = diffusers.StableDiffusionXLPipeline.from_pretrained(out)
  assert loaded.text_encoder_2 is not None and loaded.tokenizer_2 is not None

  rng = np.random.default_rng(0)
  eps = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
  cond = teacher.encode_text(PROMPTS)
  latents = student.generate(params, jnp.asarray(eps), cond, 3.0)
  ref = np.asarray(teacher.to_pixels(latents))
  teacher_params = dict(params, unet=teacher.params["unet"])
  far = np.asarray(
    teacher.to_pixels(
      student.generate(teacher_params, jnp.asarray(eps), cond, 3.0)
    )
  )
  assert np.abs(far - ref).max() > 1e-2

  spec = importlib.util.spec_from_file_location(
    "one_step_xl", out / "one_step.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  images = module.one_step(
    str(out), PROMPTS, eps.transpose(0, 3, 1, 2), guidance=3.0
  )
  ours = images.numpy().transpose(0, 2, 3, 1)
  err = float(np.abs(ours - ref).max())
  print(f"SDXL one-step export: max abs {err:.2e} on [-1, 1] pixels")
  assert err <= 1e-4, err


def test_folder_errors(folder, tmp_path):
  """One line each: an SD 1.x/2.x folder given to the sdxl family, an
  SDXL folder without its second tokenizer's files, a UNet without
  micro-conditioning, and bad micro-conditioning settings."""
  path, _ = folder

  def refused(words, bad=path, **fields):
    with pytest.raises(sd_loading.SDError, match=words) as e:
      _teacher(bad, **fields)
    assert "\n" not in str(e.value)

  sd = tmp_path / "sd_made"
  testing.make_folder(sd)
  refused("Stable Diffusion 1.x/2.x folder", sd / "sd")
  no_index = tmp_path / "no_index"
  shutil.copytree(sd / "sd", no_index)
  (no_index / "model_index.json").unlink()
  refused("one text encoder, no text_encoder_2/", no_index)

  no_vocab = tmp_path / "no_vocab"
  shutil.copytree(path, no_vocab)
  for name in ("vocab.json", "merges.txt", "tokenizer.json"):
    (no_vocab / "tokenizer_2" / name).unlink(missing_ok=True)
  before = sorted(p.name for p in (no_vocab / "tokenizer_2").iterdir())
  refused("tokenizer_2 lacks vocab.json, merges.txt", no_vocab)
  assert sorted(p.name for p in (no_vocab / "tokenizer_2").iterdir()) == before

  plain = tmp_path / "plain_unet"
  shutil.copytree(path, plain)
  cfg_file = plain / "unet" / "config.json"
  cfg = json.loads(cfg_file.read_text())
  cfg["addition_embed_type"] = None
  cfg_file.write_text(json.dumps(cfg))
  refused("not an SDXL UNet", plain)

  refused("must be positive", original_size=0)
  refused("expected a size in pixels", crop_top_left=("a", 0))
