"""configs/sdxl.py end to end on a tiny SDXL folder, and the refinement on
SDXL (the library-level parity checks are in
tests/unit/test_sdxl_teacher.py).

The folder is written by diffusers' `StableDiffusionXLPipeline`
(`testing.make_xl_folder`); only the resolution, batch, step counts and
mesh of the shipped config are reduced.
"""

import json
import pathlib

import ml_collections
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

from boot_jax import teachers, testing
from boot_jax.config import recipes

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("xl")
  testing.make_xl_folder(path)
  return path / "sdxl"


def test_sdxl_train_resume_sample_evaluate_export(folder, tmp_path):
  """A guidance-conditioned student (w in [2, 8]) of configs/sdxl.py:
  trains 2 steps, resumes to 4, samples with --prompt, evaluates, and
  exports a folder that `StableDiffusionXLPipeline` loads, whose
  `one_step.py` (and the jax artifact) give the sampled images; the
  wrong family's folder is refused in one line with nothing written."""
  prompts = tmp_path / "p.txt"
  prompts.write_text("a red square\na blue circle\nsky\n")
  work = tmp_path / "w"
  args = [
    "--config",
    "configs/sdxl.py",
    f"--config.teacher.path={folder}",
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
  assert "teacher sdxl (eps-prediction)" in out
  code, out, err = run_module(
    "boot_jax.train", *args, "--config.train.steps=4", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  assert "resuming from the checkpoint of step 2" in out
  rows = (work / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
  config = json.loads((work / "config.json").read_text())
  assert config["teacher"]["name"] == "sdxl"
  assert config["teacher"]["crop_top_left"] == [0, 0]

  code, _, err = run_sample(
    work,
    tmp_path / "s.npz",
    "--num",
    "2",
    "--prompt",
    "a red square",
    "--prompt",
    "sky",
    "--guidance",
    "5",
    cwd=ROOT,
  )
  assert code == 0, err[-3000:]
  s = np.load(tmp_path / "s.npz")
  assert s["images"].shape == (2, 16, 16, 3)
  assert s["latents"].shape == (2, 8, 8, 4)

  code, out, err = run_module(
    "boot_jax.evaluate", "--workdir", work, "--num_samples", "4", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  report = json.loads((work / "eval.json").read_text())
  assert report, out

  code, _, err = run_module(
    "boot_jax.export", "--workdir", work, "--out", tmp_path / "e", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  out_dir = tmp_path / "e" / "diffusers"
  unet, info = diffusers.UNet2DConditionModel.from_pretrained(
    out_dir / "unet", output_loading_info=True
  )
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(out_dir)
  assert pipe.unet.config.addition_embed_type == "text_time"

  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "one_step_sdxl", out_dir / "one_step.py"
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
  print(f"SDXL export one_step.py vs sample: max abs {err:.2e}")
  assert err <= 1e-4, err
  # The jax artifact from the same noise, packed text condition and w.
  signature = json.loads((tmp_path / "e" / "signature.json").read_text())
  assert [i["name"] for i in signature["inputs"]] == [
    "eps",
    "text",
    "guidance",
  ]
  w_shape = [2 if d == "b" else d for d in signature["inputs"][2]["shape"]]
  teacher = teachers.build_teacher(ml_collections.ConfigDict(config["teacher"]))
  text = np.asarray(teacher.encode_text(["a red square", "sky"]), np.float32)
  inputs = []
  for name, value in (
    ("eps", s["noise"]),
    ("text", text),
    ("w", np.full(w_shape, 5.0, np.float32)),
  ):
    np.save(tmp_path / f"{name}.npy", value)
    inputs.append(tmp_path / f"{name}.npy")
  got = run_export(tmp_path / "e", inputs, tmp_path / "got.npy")
  assert float(np.abs(got - s["images"]).max()) <= 1e-5

  # The wrong family's folder: one line, exit != 0, nothing written.
  before = tree_hash(work)
  sd = tmp_path / "sd_made"
  testing.make_folder(sd)
  for config, path, words in (
    ("configs/sdxl.py", sd / "sd", "use configs/sd15.py"),
    ("configs/sd15.py", folder, "Stable Diffusion XL folder"),
  ):
    bad = tmp_path / "bad"
    code, _, err = run_module(
      "boot_jax.train",
      "--config",
      config,
      f"--config.teacher.path={path}",
      "--config.teacher.resolution=16",
      f"--config.teacher.prompts={prompts}",
      "--workdir",
      bad,
      cwd=ROOT,
    )
    lines = error_lines(err)
    assert code != 0 and len(lines) == 1 and words in lines[0], err[-2000:]
    assert not bad.exists() or not any(bad.iterdir())
  # The finished run is untouched by the refused ones.
  assert tree_hash(work) == before


def test_refinement_on_sdxl(folder, tmp_path):
  """boot.refine with configs/sdxl.py's settings (bf16, remat, guidance 5
  in the teacher and the fake network, online encoding of both text
  encoders) on a data=2, fsdp=4 mesh: the fake network starts as the
  teacher's UNet, its state is split over fsdp, and 2 refinement steps
  are finite and move the student."""
  src = tmp_path / "p.txt"
  src.write_text("a red square\na blue circle\na green dot\n")
  c = recipes.sdxl_boot_config(resolution=16)
  c.teacher.path = str(folder)
  c.teacher.prompts = str(src)
  c.teacher.prompt_cache = str(tmp_path / "cache")
  check_refinement_setup(c, 5.0)
