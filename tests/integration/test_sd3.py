"""configs/sd35_medium.py end to end on a tiny SD 3.5 folder, and the
refinement on it (the library-level parity checks are in
tests/unit/test_sd3_teacher.py and tests/unit/test_mmdit.py).

The folder is written by diffusers' `StableDiffusion3Pipeline`
(`testing.make_sd3_folder`); only the resolution, batch, step counts and
mesh of the shipped config are reduced.
"""

import json
import pathlib

import numpy as np
import pytest
from conftest import (
  check_refinement_setup,
  error_lines,
  run_export,
  run_module,
  run_sample,
  tree_hash,
)

import boot_jax
from boot_jax import testing
from boot_jax.config import recipes

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("sentencepiece")

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("sd3")
  pipe = testing.make_sd3_folder(path)
  return path / "sd3", pipe


def test_sd3_train_resume_sample_evaluate_export(folder, tmp_path):
  """A guidance-conditioned student (w in [2, 8]) of
  configs/sd35_medium.py trains 2 steps, resumes to 4; the teacher's
  sampler from given latents equals `StableDiffusion3Pipeline` (Euler-10,
  w = 5; 1e-3 on [-1, 1] pixels, the acceptance bar); the student
  samples with --prompt, evaluates, and exports a folder that
  `StableDiffusion3Pipeline` loads, whose `one_step.py` (and the JAX
  artifact) give the sampled images; other families' folders are refused
  in one line with nothing written."""
  path, pipe = folder
  prompts = tmp_path / "p.txt"
  prompts.write_text("a red square\na blue circle\nsky\n")
  work = tmp_path / "w"
  args = [
    "--config",
    "configs/sd35_medium.py",
    f"--config.teacher.path={path}",
    "--config.teacher.resolution=16",
    f"--config.teacher.prompts={prompts}",
    f"--config.teacher.prompt_cache={tmp_path / 'cache'}",
    "--config.boot.guidance=None",
    "--config.boot.guidance_range=(2.0, 8.0)",
    "--config.train.batch_size=2",
    "--config.train.ckpt_every=2",
    "--config.train.log_every=1",
    "--config.boot.num_steps=4",
    "--config.mesh.fsdp=1",
    "--config.eval.num_samples=4",
    "--config.eval.batch_size=4",
    "--config.eval.grid_size=4",
    "--workdir",
    str(work),
  ]
  code, out, err = run_module(
    "boot_jax.train", *args, "--config.train.steps=2", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  assert "teacher sd3 (flow-prediction)" in out
  code, out, err = run_module(
    "boot_jax.train", *args, "--config.train.steps=4", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  assert "resuming from the checkpoint of step 2" in out
  rows = (work / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(json.loads(r)["loss"]) for r in rows)

  # The teacher's sampler against the pipeline, from the same latents.
  h = 16 // pipe.vae_scale_factor
  latents = np.random.default_rng(3).standard_normal((2, h, h, 16))
  latents = latents.astype(np.float32)
  np.save(tmp_path / "L.npy", latents)
  code, _, err = run_sample(
    work, tmp_path / "t.npz", "--sampler", "teacher", "--steps", "10",
    "--guidance", "5", "--prompt", "a red square", "--prompt", "sky",
    "--noise", tmp_path / "L.npy", cwd=ROOT,
  )  # fmt: skip
  assert code == 0, err[-3000:]
  with torch.no_grad():
    ref = pipe(
      prompt=["a red square", "sky"],
      height=16,
      width=16,
      num_inference_steps=10,
      guidance_scale=5.0,
      latents=torch.from_numpy(latents.transpose(0, 3, 1, 2)),
      output_type="np",
    ).images
  got = np.load(tmp_path / "t.npz")["images"]
  err = float(np.abs(got - (ref * 2.0 - 1.0)).max())
  print(f"sample --sampler teacher vs StableDiffusion3Pipeline: {err:.2e}")
  assert err <= 1e-3, err

  code, _, err = run_sample(
    work, tmp_path / "s.npz", "--num", "2", "--prompt", "a red square",
    "--prompt", "sky", "--guidance", "5", cwd=ROOT,
  )  # fmt: skip
  assert code == 0, err[-3000:]
  s = np.load(tmp_path / "s.npz")
  assert s["images"].shape == (2, 16, 16, 3)
  assert s["latents"].shape == (2, h, h, 16)

  code, out, err = run_module(
    "boot_jax.evaluate", "--workdir", work, "--num_samples", "4", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  assert json.loads((work / "eval.json").read_text()), out

  code, _, err = run_module(
    "boot_jax.export", "--workdir", work, "--out", tmp_path / "e", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  out_dir = tmp_path / "e" / "diffusers"
  model, info = diffusers.SD3Transformer2DModel.from_pretrained(
    out_dir / "transformer", output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  diffusers.StableDiffusion3Pipeline.from_pretrained(out_dir)
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "one_step_sd3", out_dir / "one_step.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  images = module.one_step(
    str(out_dir),
    ["a red square", "sky"],
    s["noise"].transpose(0, 3, 1, 2),
    guidance=5.0,
  )
  err = float(np.abs(images.numpy().transpose(0, 2, 3, 1) - s["images"]).max())
  print(f"SD3 export one_step.py vs sample: max abs {err:.2e}")
  assert err <= 1e-4, err
  # The jax artifact from the same noise, packed text condition and w.
  signature = json.loads((tmp_path / "e" / "signature.json").read_text())
  assert [i["name"] for i in signature["inputs"]] == ["eps", "text", "guidance"]
  w_shape = [2 if d == "b" else d for d in signature["inputs"][2]["shape"]]
  run = boot_jax.load(str(work))
  text = np.asarray(run.model.teacher.encode_text(["a red square", "sky"]))
  inputs = []
  for name, value in (
    ("eps", s["noise"]),
    ("text", text),
    ("w", np.full(w_shape, 5.0)),
  ):
    np.save(tmp_path / f"{name}.npy", np.asarray(value, np.float32))
    inputs.append(tmp_path / f"{name}.npy")
  got = run_export(tmp_path / "e", inputs, tmp_path / "got.npy")
  assert float(np.abs(got - s["images"]).max()) <= 1e-5

  # Other families' folders: one line, exit != 0, nothing written.
  before = tree_hash(work)
  xl = tmp_path / "xl_made"
  testing.make_xl_folder(xl)
  for config, other, words in (
    ("configs/sd35_medium.py", xl / "sdxl", "Stable Diffusion UNet folder"),
    ("configs/sdxl.py", path, "is a Stable Diffusion 3 folder"),
    ("configs/sd15.py", path, "is a Stable Diffusion 3 folder"),
  ):
    bad = tmp_path / "bad"
    code, _, err = run_module(
      "boot_jax.train", "--config", config,
      f"--config.teacher.path={other}", "--config.teacher.resolution=16",
      f"--config.teacher.prompts={prompts}", "--workdir", bad, cwd=ROOT,
    )  # fmt: skip
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1 and words in lines[0], err[-2000:]
    assert not bad.exists() or not any(bad.iterdir())
  assert tree_hash(work) == before


def test_refinement_on_sd3(folder, tmp_path):
  """boot.refine with configs/sd35_medium.py's settings (bf16, remat,
  guidance 4.5 in the teacher and the fake network, online encoding of
  the three text encoders) on a data=2, fsdp=4 mesh: the fake network
  starts as the teacher's transformer, its state is split over fsdp, and
  2 refinement steps are finite and move the student."""
  path, _ = folder
  src = tmp_path / "p.txt"
  src.write_text("a red square\na blue circle\na green dot\n")
  c = recipes.sd3_boot_config("medium", resolution=16)
  c.teacher.path = str(path)
  c.teacher.prompts = str(src)
  c.teacher.prompt_cache = str(tmp_path / "cache")
  check_refinement_setup(c, 4.5)
