"""DeepFloyd IF stage I: the Flax port, T5, the teacher's DDIM and BOOT on
tiny random folders written by diffusers' and transformers' PyTorch code
(tests/if_fixtures.py), loaded through the real loading code."""

import json
import pathlib
import shutil

import if_fixtures
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import error_lines, run_export, run_module

from boot_jax import teachers
from boot_jax.diffusion import predictions
from boot_jax.models import if_unet
from boot_jax.runtime import sharding
from boot_jax.teachers.sd import sd_teacher
from boot_jax.training import boot_run, trainer

pytest.importorskip("sentencepiece")
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  base = tmp_path_factory.mktemp("if")
  pipe = if_fixtures.make_folder(base / "if")
  if_fixtures.sharded_copy(pipe, base / "if16", fp16=True)
  if_fixtures.sharded_copy(pipe, base / "if32", fp16=False)
  return base / "if", base / "if16", pipe


@pytest.fixture(scope="module")
def smooth_folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("if_smooth") / "if"
  if_fixtures.make_folder(path, seed=1, eps_scale=0.03)
  return path


def _teacher(path, **kw):
  config = ml_collections.ConfigDict(dict(name="if", path=str(path), **kw))
  return teachers.build_teacher(config)


def test_unet_matches_pytorch(folder):
  """Our Flax port vs diffusers' PyTorch UNet: all six output channels
  (epsilon and the learned range), T5 embeddings of a prompt and of the
  empty prompt, two noise levels, 16 px (three levels: 16, 8, 4).
  Bound 1e-4 max abs (fp32), as the issue asks; measured 1.1e-5 on
  outputs up to 1.7. (In float64, with diffusers' float32 timestep
  features replaced by float64 ones, the two agree to 3e-6: what is left
  is the float32 softmax both use in IF's attention pooling.)"""
  import torch

  path, _, pipe = folder
  teacher = _teacher(path, resolution=16)
  emb = np.asarray(teacher.encode_text(["a red square", ""]), np.float32)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
  t = np.array([10, 700])
  with torch.no_grad():
    want = pipe.unet(
      torch.tensor(x), torch.tensor(t), encoder_hidden_states=torch.tensor(emb)
    ).sample.numpy()
  full = teacher.module.clone(full_output=True, attention="plain")
  got = full.apply(
    {"params": teacher.params},
    jnp.asarray(x.transpose(0, 2, 3, 1)),
    jnp.asarray(t),
    jnp.asarray(emb),
  )
  got = np.asarray(got).transpose(0, 3, 1, 2)
  err = float(np.abs(got - want).max())
  print(f"IF UNet vs PyTorch: max abs {err:.2e} (outputs up to "
        f"{np.abs(want).max():.2f})")  # fmt: skip
  assert got.shape == want.shape == (2, 6, 16, 16)
  assert err <= 1e-4
  # The text matters: the same inputs with the two embeddings swapped.
  swapped = full.apply(
    {"params": teacher.params},
    jnp.asarray(x.transpose(0, 2, 3, 1)),
    jnp.asarray(t),
    jnp.asarray(emb[::-1]),
  )
  assert (
    float(np.abs(np.asarray(swapped).transpose(0, 3, 1, 2) - got).max()) > 0.05
  )
  # The teacher reads epsilon only, with the default attention.
  eps = teacher.apply(
    teacher.params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), emb
  )
  assert (
    float(np.abs(np.asarray(eps).transpose(0, 3, 1, 2) - want[:, :3]).max())
    <= 1e-4
  )


def test_t5_matches_pytorch_in_every_weight_form(folder):
  """T5 embeddings vs transformers' PyTorch encoder with IF's tokenisation
  (1e-5: two layers of width 32); folders with sharded float32 weights and
  with sharded fp16-variant weights load to the same numbers, UNet and T5
  (the weights are exactly representable in fp16)."""
  import torch

  path, path16, pipe = folder
  prompts = ["A Red Square ", "two dogs playing in the snow", ""]
  teacher = _teacher(path, resolution=16)
  got = np.asarray(teacher.encode_text(prompts))
  prompt = pipe._text_preprocessing(prompts, clean_caption=False)
  tok = pipe.tokenizer(
    prompt, padding="max_length", max_length=77, truncation=True,
    add_special_tokens=True, return_tensors="pt",
  )  # fmt: skip
  with torch.no_grad():
    want = pipe.text_encoder(
      tok.input_ids, attention_mask=tok.attention_mask
    ).last_hidden_state.numpy()
  assert got.shape == want.shape == (3, 77, if_fixtures.T5_WIDTH)
  assert float(np.abs(got - want).max()) <= 1e-5
  path32 = path16.parent / "if32"
  for other_path, index in (
    (path16, "model.safetensors.index.fp16.json"),
    (path32, "model.safetensors.index.json"),
  ):
    files = sorted(p.name for p in (other_path / "text_encoder").iterdir())
    assert index in files and len(files) > 3, files
    assert len(list((other_path / "unet").glob("*-0000*.safetensors"))) > 1
    other = _teacher(other_path, resolution=16)
    np.testing.assert_array_equal(np.asarray(other.encode_text(prompts)), got)
    for a, b in zip(
      jax.tree.leaves(other.params),
      jax.tree.leaves(teacher.params),
      strict=True,
    ):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_teacher_ddim_matches_if_pipeline(smooth_folder):
  """10 DDIM steps at w = 7 from the same initial noise vs diffusers'
  PyTorch `IFPipeline` with a `DDIMScheduler` made from the folder's
  scheduler config: as written (thresholding on, as IF's folders say; our
  teacher follows the folder by default), and with thresholding off on
  both sides (`teacher.thresholding=False`: clipping at 1 as the config's
  clip_sample says). <= 1e-3 max abs on the [-1, 1] output; measured
  2e-5 before thresholding was the default. The folder's epsilon head is
  scaled by 0.03 (see `if_fixtures.make_folder`); guidance still moves
  the images (checked against w = 1 below)."""
  import torch
  from diffusers import DDIMScheduler, IFPipeline

  path = smooth_folder
  pipe = IFPipeline.from_pretrained(str(path))
  assert pipe.scheduler.config.thresholding  # IF's folders say so
  prompts = ["a red square", "a photo of a cat"]
  noise = torch.randn(
    (2, 3, 16, 16), generator=torch.Generator().manual_seed(0)
  ).numpy()

  def pipeline(**override):
    pipe.scheduler = DDIMScheduler.from_config(
      pipe.scheduler.config, **override
    )
    # from_config keeps the DDPM config's variance_type, which makes the
    # pipeline hand DDIM the variance channels too; DDIM reads epsilon.
    pipe.scheduler.register_to_config(variance_type=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
      return pipe(
        prompts, num_inference_steps=10, guidance_scale=7.0, height=16,
        width=16, generator=torch.Generator().manual_seed(0),
        output_type="pt",
      ).images.numpy()  # fmt: skip

  def ddim_10(teacher, guidance):
    """The teacher's DDIM-10 from `noise`, channels first."""
    x = teacher.ddim(
      teacher.params,
      jnp.asarray(noise.transpose(0, 2, 3, 1)),
      teacher.ddim_timesteps(10),
      teacher.encode_text(prompts),
      guidance=guidance,
    )
    return np.asarray(x).transpose(0, 3, 1, 2)

  as_written = pipeline()
  teacher = _teacher(path, resolution=16)
  err = float(np.abs(ddim_10(teacher, 7.0) - as_written).max())
  print(f"IF DDIM-10 (w=7, thresholding) vs IFPipeline: max abs {err:.2e}")
  assert err <= 1e-3
  clipped = pipeline(thresholding=False)
  clipping = _teacher(path, resolution=16, thresholding=False)
  want = clipped
  err = float(np.abs(ddim_10(clipping, 7.0) - want).max())
  print(f"IF DDIM-10 (w=7, clip_sample) vs IFPipeline: max abs {err:.2e}")
  assert err <= 1e-3
  # The two processings differ here, so each test above can fail.
  assert np.abs(as_written - clipped).max() > 1e-2
  # Not a trivial image: mostly inside (-1, 1), and moved by guidance.
  assert (np.abs(want) < 0.999).mean() > 0.9
  assert np.abs(ddim_10(clipping, 1.0) - want).max() > 0.3


def test_thresholding_matches_diffusers():
  """Dynamic thresholding vs diffusers' `_threshold_sample` (1e-6)."""
  import torch
  from diffusers import DDIMScheduler

  sched = DDIMScheduler(thresholding=True, sample_max_value=1.5)
  x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype("f4")
  x[1] *= 0.3  # a sample whose quantile is below 1 (s clipped to 1)
  want = sched._threshold_sample(torch.tensor(x)).numpy()
  got = predictions.threshold(jnp.asarray(x), 0.995, 1.5)
  assert float(np.abs(np.asarray(got) - want).max()) <= 1e-6


def test_folder_errors(folder, tmp_path):
  """Bad folders fail in one line naming the cause."""
  from boot_jax import testing

  path, _, _ = folder
  cases = []
  no_text = tmp_path / "no_text"
  shutil.copytree(path, no_text)
  shutil.rmtree(no_text / "text_encoder")
  cases.append((no_text, "has no text_encoder/ folder"))
  bins = tmp_path / "bins"
  shutil.copytree(path, bins)
  (bins / "unet" / "diffusion_pytorch_model.safetensors").rename(
    bins / "unet" / "diffusion_pytorch_model.bin"
  )
  cases.append((bins, "are pickles and are not read"))
  cut = tmp_path / "cut"
  shutil.copytree(path, cut)
  f = cut / "unet" / "diffusion_pytorch_model.safetensors"
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  cases.append((cut, "truncated, or not a safetensors file"))
  no_spiece = tmp_path / "no_spiece"
  shutil.copytree(path, no_spiece)
  for name in ("spiece.model", "tokenizer.json"):
    (no_spiece / "tokenizer" / name).unlink(missing_ok=True)
  cases.append((no_spiece, "lacks spiece.model"))
  testing.make_folder(tmp_path)
  sd_folder = tmp_path / "sd"
  cases.append((sd_folder, "is a Stable Diffusion folder"))
  for bad, expected in cases:
    with pytest.raises(ValueError) as e:
      _teacher(bad, resolution=16)
    assert expected in str(e.value) and "\n" not in str(e.value), e.value
  # The other way round: the IF folder given to the SD family.
  config = ml_collections.ConfigDict(dict(name="sd", path=str(path)))
  with pytest.raises(ValueError) as e:
    sd_teacher.build(config)
  assert "DeepFloyd IF folder" in str(e.value), e.value
  # A UNet config this port does not implement is named.
  cfg = if_fixtures.unet_config()
  cfg["down_block_types"] = ("CrossAttnDownBlock2D",) * 3
  with pytest.raises(if_unet.IFConfigError, match="not a DeepFloyd IF UNet"):
    if_unet.check_config(cfg)


def test_config_json_is_what_diffusers_wrote(folder):
  cfg = if_fixtures.read_config(folder[0])
  assert cfg["addition_embed_type"] == "text"
  assert cfg["resnet_time_scale_shift"] == "scale_shift"
  assert json.dumps(cfg)


def _if_config(path, prompts, cache):
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "if_m", ROOT / "configs" / "if_i_m.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.teacher.path = str(path)
  config.teacher.prompts = str(prompts)
  config.teacher.prompt_cache = str(cache)
  # Sizes only; everything else as shipped (64 px, bf16, remat, FSDP over
  # the session's 8 devices, guidance 7, online T5 encoding).
  config.train.batch_size = 8
  config.train.steps = 2
  config.train.ckpt_every = 2
  config.train.log_every = 1
  config.boot.num_steps = 4
  # The teacher's grid (checked in the digits run) costs 2 minutes here.
  config.eval.teacher_grid = False
  return config


def test_train_resume_sample_export_end_to_end(folder, tmp_path, no_datasets):
  """configs/if_i_m.py on a tiny IF folder: trains without reading any
  image (every dataset loader raises), checkpoints, resumes from the
  command line, `sample --prompt` writes 64x64x3 images, and `export`'s
  artifact reproduces them (1e-5) from the same noise and T5 embeddings."""

  path = folder[0]
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(if_fixtures.SENTENCES) + "\n")
  work = tmp_path / "w"
  config = _if_config(path, prompts, tmp_path / "cache")
  assert config.mesh.fsdp == -1 and config.train.compute_dtype == "bfloat16"
  boot_run.train_and_evaluate(config, str(work), printer=lambda s: None)
  assert not no_datasets
  assert (work / "checkpoints" / "2").is_dir()

  args = [
    "--config", "configs/if_i_m.py",
    f"--config.teacher.path={path}",
    f"--config.teacher.prompts={prompts}",
    f"--config.teacher.prompt_cache={tmp_path / 'cache'}",
    "--config.train.batch_size=8",
    "--config.train.ckpt_every=2",
    "--config.train.log_every=1",
    "--config.boot.num_steps=4",
    "--config.eval.teacher_grid=false",
  ]  # fmt: skip
  code, out, err = run_module(
    "boot_jax.train",
    *args,
    "--config.train.steps=4",
    "--workdir",
    work,
    cwd=ROOT,
  )
  assert code == 0, err[-3000:]
  assert "resuming from the checkpoint of step 2" in out
  rows = (work / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(json.loads(r)["loss"]) for r in rows)

  code, out, err = run_module(
    "boot_jax.sample",
    "--workdir", work, "--out", tmp_path / "s.npz", "--num", "2",
    "--prompt", "a red square",
    cwd=ROOT,
  )  # fmt: skip
  assert code == 0, err[-3000:]
  s = np.load(tmp_path / "s.npz")
  assert s["images"].shape == (2, 64, 64, 3)
  assert "latents" not in s  # pixels: no VAE
  assert s["images"].min() >= -1.0 and s["images"].max() <= 1.0
  assert (tmp_path / "s.png").is_file()

  code, out, err = run_module(
    "boot_jax.export", "--workdir", work, "--out", tmp_path / "e", cwd=ROOT
  )
  assert code == 0, err[-3000:]
  teacher = _teacher(path)
  np.save(tmp_path / "eps.npy", s["noise"])
  np.save(
    tmp_path / "text.npy",
    np.asarray(teacher.encode_text(["a red square"] * 2), np.float32),
  )
  got = run_export(
    tmp_path / "e",
    [tmp_path / "eps.npy", tmp_path / "text.npy"],
    tmp_path / "got.npy",
  )
  assert float(np.abs(got - s["images"]).max()) <= 1e-5

  # A user error on the command line: one line, non-zero exit (the
  # folder errors are checked in test_folder_errors, in process).
  code, _, err = run_module(
    "boot_jax.train", *args, "--config.teacher.resolution=62",
    "--config.train.steps=1", "--workdir", tmp_path / "bad", cwd=ROOT,
  )  # fmt: skip
  lines = error_lines(err)
  assert code != 0 and len(lines) == 1, err[-2000:]
  assert "not divisible by 4" in lines[0]


def test_refinement_on_if(folder, tmp_path):
  """boot.refine on the IF teacher as configs/if_i_m.py ships it (64 px,
  bf16, remat, guidance 7 in the teacher and the fake network, online T5)
  on one device as on a laptop (the phase on FSDP meshes is checked on our
  UNet in test_sharding.py and on SD in test_sd.py; compiling it on 8
  devices here takes twice as long): a refinement step from the teacher's
  weights (train.steps=0: one compile) is finite and the fake network
  starts as the teacher's UNet."""

  prompts = tmp_path / "prompts.txt"
  prompts.write_text("\n".join(if_fixtures.SENTENCES) + "\n")
  config = _if_config(folder[0], prompts, tmp_path / "cache")
  config.train.steps = 0
  config.train.batch_size = 2
  config.mesh.data = config.mesh.fsdp = 1
  config.boot.refine = True
  config.refine.steps = 1
  s = trainer.setup(config)
  state = s.init_state()
  fake = jax.tree.leaves(jax.device_get(state.refine["fake"]))
  for a, b in zip(
    fake, jax.tree.leaves(jax.device_get(s.teacher.params)), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a, np.float32), b)
  state, history = trainer.run(s, state)
  assert int(state.step) == 1
  assert all(np.isfinite(row["loss"]) for row in history)
  assert all(np.isfinite(row["loss_fake"]) for row in history)


def test_every_unet_parameter_carries_logical_names():
  """Every parameter of the port is named, and the shipped rules (FSDP
  fallback off) put all but a few small leaves' bytes over fsdp: at fsdp 8
  a device holds at most 1.1/8 of the UNet. (At IF-I-XL's shapes it is
  exactly 1/fsdp: benchmarks/if_memory.py.)"""

  import flax.linen as nn

  module = if_unet.IFUNet(if_fixtures.unet_config(16))
  boxed = jax.eval_shape(
    module.init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32),
    jax.ShapeDtypeStruct((1,), jnp.float32),
    jax.ShapeDtypeStruct((1, 77, if_fixtures.T5_WIDTH), jnp.float32),
  )["params"]
  specs = sharding.logical_specs(boxed)
  flat = jax.tree_util.tree_flatten_with_path(specs)[0]
  unnamed = [jax.tree_util.keystr(k) for k, p in flat if not any(p)]
  assert len(flat) > 100 and not unnamed, unnamed[:5]
  params = nn.meta.unbox(boxed)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=8)))
  shardings = sharding.tree_shardings(
    params,
    specs,
    mesh,
    sharding.DEFAULT_RULES,
    fsdp_fallback=False,
  )
  total = sharding.tree_bytes(params)
  per_device = sharding.shard_bytes(params, shardings)
  assert per_device <= 1.1 * total / 8, (per_device, total)
