"""Stable Diffusion 3 teachers: parity with diffusers' PyTorch pipeline.

A tiny random SD 3.5 folder (`testing.make_sd3_folder`: RMS q/k norms, a
dual-attention block, a 16-channel VAE with a shift factor, two CLIPs
with projection, T5, a FlowMatchEuler scheduler with shift 3; written by
`StableDiffusion3Pipeline.save_pretrained`) is loaded through our loader.
Tolerances (float32): CLIP's conditions within 1e-5 (as the SD and SDXL
tests), T5's within 1e-5 of their scale (as tests/unit/test_t5_encoder.py;
256 tokens, unscaled attention), the velocity within 1e-4, and the guided
Euler-10 image within 1e-3 on [-1, 1] pixels (the acceptance bar); other
summation orders are the only source of difference.
"""

import json
import shutil

import ml_collections
import numpy as np
import pytest

from boot_jax import teachers, testing
from boot_jax.teachers.sd import sd_teacher
from boot_jax.teachers.sd3 import loading

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("sentencepiece")

PROMPTS = ["a red square on a blue background", "", "two dogs in the snow"]
LENGTH, POOLED, WIDTH = 77 + 256, 24, testing.SD3_TEXT_WIDTH


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("sd3")
  pipe = testing.make_sd3_folder(path)
  return path / "sd3", pipe


def _teacher(path, **fields):
  section = dict(
    name="sd3", path=str(path), resolution=16, negative_prompt="", t5=None
  )
  return teachers.build_teacher(
    ml_collections.ConfigDict({**section, **fields})
  )


def test_text_conditioning_matches_the_pipeline(folder):
  """The packed condition holds `encode_prompt`'s text tokens (CLIPs
  padded, then T5) and pooled embedding; the null condition is the
  encoded negative prompt."""
  path, pipe = folder
  teacher = _teacher(path)
  assert teacher.condition.shape == (LENGTH + 1, WIDTH)
  assert teacher.prediction == "flow"
  assert teacher.schedule.name == "rectified_flow"
  assert teacher.schedule.shift == 3.0
  ours = np.asarray(teacher.encode_text(PROMPTS))
  with torch.no_grad():
    text, neg, pooled, neg_pooled = pipe.encode_prompt(
      PROMPTS, PROMPTS, PROMPTS, device="cpu", do_classifier_free_guidance=True
    )
  got_text, got_pooled = sd_teacher.unpack_pooled(ours, LENGTH, POOLED)
  diff = np.abs(np.asarray(got_text) - text.numpy())
  assert diff[:, :77].max() <= 1e-5
  t5_scale = np.abs(text.numpy()[:, 77:]).max()
  assert t5_scale > 0.1  # T5's part is there
  assert diff[:, 77:].max() <= 1e-5 * t5_scale
  assert np.abs(np.asarray(got_pooled) - pooled.numpy()).max() <= 1e-5
  null_text, null_pooled = sd_teacher.unpack_pooled(
    teacher.null_embedding[None], LENGTH, POOLED
  )
  assert np.abs(np.asarray(null_text) - neg.numpy()[:1]).max() <= 1e-5 * (
    t5_scale
  )
  assert np.abs(np.asarray(null_pooled) - neg_pooled.numpy()[:1]).max() <= 1e-5


@pytest.mark.slow
def test_velocity_and_guided_euler_match_the_pipeline(folder):
  """The transformer's velocity, then the teacher's Euler-10 at w = 5
  against `StableDiffusion3Pipeline` from the same latents."""
  path, pipe = folder
  teacher = _teacher(path)
  rng = np.random.default_rng(0)
  h = teacher.sample_shape[0]
  x = rng.standard_normal((2, h, h, 16)).astype(np.float32)
  cond = np.asarray(teacher.encode_text(PROMPTS[::2]))
  text, pooled = sd_teacher.unpack_pooled(cond, LENGTH, POOLED)
  t = np.array([0.97, 0.3], np.float32)
  with torch.no_grad():
    want = pipe.transformer(
      hidden_states=torch.from_numpy(x.transpose(0, 3, 1, 2)),
      encoder_hidden_states=torch.from_numpy(np.array(text)),
      pooled_projections=torch.from_numpy(np.array(pooled)),
      timestep=torch.from_numpy(t * 1000),
    ).sample.numpy()
  got = np.asarray(teacher.output(teacher.params, x, t, cond))
  err = np.abs(got - want.transpose(0, 2, 3, 1)).max()
  print(f"velocity: max abs {err:.2e}")
  assert err <= 1e-4, err

  with torch.no_grad():
    ref = pipe(
      prompt=PROMPTS[::2],
      height=16,
      width=16,
      num_inference_steps=10,
      guidance_scale=5.0,
      latents=torch.from_numpy(x.transpose(0, 3, 1, 2)),
      output_type="np",
    ).images
  latents = teacher.ddim(
    teacher.params, x, teacher.ddim_timesteps(10), cond, 5.0
  )
  ours = np.asarray(teacher.to_pixels(latents))
  err = float(np.abs(ours - (ref * 2.0 - 1.0)).max())
  print(f"Euler-10 at w = 5: max abs {err:.2e} on [-1, 1] pixels")
  assert err <= 1e-3, err


def test_without_t5_the_text_is_zeros_there(folder, tmp_path):
  """`teacher.t5=false` conditions on zeros in T5's place, as the
  pipeline without `text_encoder_3`; a folder without T5 is refused when
  the config asks for it."""
  path, pipe = folder
  teacher = _teacher(path, t5=False)
  ours = np.asarray(teacher.encode_text(PROMPTS[:1]))
  assert not ours[:, 77:LENGTH].any()
  pipe_no_t5 = diffusers.StableDiffusion3Pipeline(
    **{**pipe.components, "text_encoder_3": None, "tokenizer_3": None}
  )
  with torch.no_grad():
    text, _, pooled, _ = pipe_no_t5.encode_prompt(
      PROMPTS[:1], PROMPTS[:1], None, device="cpu",
      do_classifier_free_guidance=False,
    )  # fmt: skip
  got_text, got_pooled = sd_teacher.unpack_pooled(ours, LENGTH, POOLED)
  assert np.abs(np.asarray(got_text) - text.numpy()).max() <= 1e-5
  assert np.abs(np.asarray(got_pooled) - pooled.numpy()).max() <= 1e-5
  no_t5 = tmp_path / "no_t5"
  shutil.copytree(path, no_t5)
  shutil.rmtree(no_t5 / "text_encoder_3")
  with pytest.raises(loading.SD3Error, match="no text_encoder_3/"):
    _teacher(no_t5)


def test_other_folders_are_refused_in_one_line(folder, tmp_path):
  """An SD3 folder given to the sd and sdxl families, a UNet folder given
  to sd3, an unknown scheduler, another prediction."""
  path, _ = folder
  for name in ("sd", "sdxl"):
    with pytest.raises(ValueError, match="is a Stable Diffusion 3 folder"):
      teachers.build_teacher(
        ml_collections.ConfigDict(dict(name=name, path=str(path)))
      )
  unet = tmp_path / "unet_folder"
  shutil.copytree(path, unet)
  (unet / "unet").mkdir()
  with pytest.raises(loading.SD3Error, match="is a Stable Diffusion UNet"):
    _teacher(unet)
  bad = tmp_path / "bad"
  shutil.copytree(path, bad)
  sched = bad / "scheduler" / "scheduler_config.json"
  cfg = json.loads(sched.read_text())
  sched.write_text(json.dumps({**cfg, "_class_name": "DDIMScheduler"}))
  with pytest.raises(loading.SD3Error, match="not a FlowMatchEuler"):
    _teacher(bad)
  sched.write_text(json.dumps({**cfg, "use_dynamic_shifting": True}))
  with pytest.raises(loading.SD3Error, match="use_dynamic_shifting=True"):
    _teacher(bad)
  with pytest.raises(loading.SD3Error, match="predicts the flow velocity"):
    _teacher(path, prediction="epsilon")
  # 12 positions of 2x2 patches cover 24 latents: 48 px with the tiny VAE.
  with pytest.raises(loading.SD3Error, match="more than the transformer's"):
    _teacher(path, resolution=64)
  with pytest.raises(loading.SD3Error, match="not divisible by 4"):
    _teacher(path, resolution=18)
