"""Exports a Stable Diffusion student as a diffusers (PyTorch) folder.

`export_diffusers` writes

    OUT/unet/                   the student's weights as diffusers'
                                PyTorch UNet2DConditionModel (config.json,
                                diffusion_pytorch_model.safetensors)
    OUT/vae/, text_encoder/,    copies of the teacher folder's
        tokenizer/, scheduler/  (PyTorch pickles are never copied);
                                an SDXL folder's text_encoder_2/ and
                                tokenizer_2/ too
    OUT/model_index.json
    OUT/boot_student.json       what the one-step function needs (below)
    OUT/boot_guidance.safetensors
                                a guidance-conditioned student's w
                                embedding (only for such students)
    OUT/one_step.py             a self-contained PyTorch one-step sampler

`one_step.py` needs only torch, diffusers and transformers (plus
safetensors, a dependency of both, for a guidance-conditioned student):

    spec = importlib.util.spec_from_file_location("one_step", "OUT/one_step.py")
    ...
    images = module.one_step("OUT", ["a red square"], noise)  # NCHW, [-1, 1]

It computes what `Student.generate` followed by `sd.decode` computes in JAX:
the UNet once at the student's clean time, the parameterization, the
trajectory's clean end `x = alpha * y + sigma * eps` (for diffusers' tables
with `set_alpha_to_one=False`, alpha and sigma there are not exactly 1 and
0), and the VAE.

The UNet is still a diffusers UNet, but it is not a multi-step denoiser:
use it through `one_step.py`, not a diffusers pipeline's scheduler loop.

`boot_student.json` keys: `parameterization` ('direct': the UNet's output
is the signal; 'teacher': it is read as the teacher's native `prediction`
at the noise end), `prediction` ('eps', 'v' or 'x0'), `space` ('signal' or
'x'), `t_clean` and `t_max` (integer timesteps), `alpha_clean`,
`sigma_clean`, `alpha_max`, `sigma_max` (float32 values written as floats),
`vae_scaling_factor`, `guidance` (null, or how the w embedding is made),
`micro_conditioning` (null, or for SDXL: `text_length`, `pooled_width`
and the `time_ids` the student was distilled with).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from flax import traverse_util

from boot_jax.models import layers, weights
from boot_jax.teachers.sd import loading

FORMAT = 1
META_FILE = "boot_student.json"
GUIDANCE_FILE = "boot_guidance.safetensors"
# The section the export's README.md gets for this folder.
README = """## PyTorch: `diffusers/` and `one_step.py`

`diffusers/` holds the student as a diffusers folder (its UNet, the
teacher's VAE, text encoder, tokenizer and scheduler) and `one_step.py`,
the one-step sampler in PyTorch. It needs torch, diffusers and
transformers (and safetensors for a guidance-conditioned student):

```python
import importlib.util
import torch

spec = importlib.util.spec_from_file_location(
  "one_step", "diffusers/one_step.py"
)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
noise = torch.randn(1, 4, 64, 64)  # latents: resolution / 8
images = module.one_step("diffusers", ["a red square"], noise)  # NCHW
```

The UNet is not a multi-step denoiser: use it through `one_step.py`, not
a diffusers pipeline's scheduler loop.
"""

ONE_STEP_FILE = "one_step.py"
COPIED = ("vae", "text_encoder", "tokenizer", "scheduler")
# Never carried into the export: pickled checkpoints.
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
GUIDANCE_PARAMS = "GuidanceEmbedding_0"


def export_diffusers(
  teacher_folder: str,
  params,
  student,
  out_dir: str,
  check=loading.check_folder,
  copied=COPIED,
) -> dict:
  """Writes a Stable Diffusion (or SDXL) student as a diffusers folder.

  Args:
    teacher_folder: the teacher's diffusers folder (see `sd`); its UNet
      config, VAE, text encoder, tokenizer and scheduler are reused.
    params: the student's parameters, `{"unet": <diffusers Flax UNet
      params>}` and, for a guidance-conditioned student,
      `"GuidanceEmbedding_0"`.
    student: the `boot_jax.student.Student` (parameterization, prediction,
      space, schedule, guided).
    out_dir: the folder to write; it must not exist or be empty.
    check: `folder -> UNet config`, the family's folder check (SDXL's
      `teachers.sdxl.loading.check_folder`).
    copied: the teacher's parts copied beside the student's UNet (SDXL's
      second text encoder and tokenizer too).

  Returns:
    The contents of `boot_student.json`.

  Raises:
    sd.SDError: the teacher folder cannot be exported (not a Stable
      Diffusion folder, pickled weights only, ...).
    ValueError: the student or its parameters do not fit the folder, or
      `out_dir` is not empty.
  """

  unet_config = _check_teacher(teacher_folder, check, copied)
  _check_student(student, unet_config, teacher_folder)
  if os.path.exists(out_dir) and (
    not os.path.isdir(out_dir) or os.listdir(out_dir)
  ):
    raise ValueError(f"export folder {out_dir} exists and is not empty")
  params = jax.tree.map(
    lambda p: np.array(p, np.float32), jax.device_get(params)
  )
  if "unet" not in params:
    raise ValueError(
      'the student parameters have no "unet" entry: not a Stable Diffusion '
      "student's parameters"
    )
  extra = sorted(set(params) - {"unet", GUIDANCE_PARAMS})
  if extra:
    raise ValueError(f"unexpected student parameters {extra}")
  if student.guided != (GUIDANCE_PARAMS in params):
    have = "no" if student.guided else "a"
    raise ValueError(
      f"the student is{'' if student.guided else ' not'} guidance-"
      f"conditioned but its parameters have {have} {GUIDANCE_PARAMS}"
    )
  model = to_pytorch_unet(unet_config, params["unet"])
  meta = _meta(teacher_folder, student, unet_config)

  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(os.path.join(out_dir, "unet"), safe_serialization=True)
  for part in copied:
    shutil.copytree(
      os.path.join(teacher_folder, part),
      os.path.join(out_dir, part),
      ignore=shutil.ignore_patterns(*PICKLES),
    )
  write_model_index(teacher_folder, out_dir, copied)
  if student.guided:
    write_guidance(
      params[GUIDANCE_PARAMS], os.path.join(out_dir, GUIDANCE_FILE)
    )
  with open(os.path.join(out_dir, META_FILE), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  with open(os.path.join(out_dir, ONE_STEP_FILE), "w", encoding="utf-8") as f:
    f.write(_one_step_source())
  return meta


# (part, Flax weights, PyTorch weights) of the parts the export reads.
WEIGHTS = (
  (
    "unet",
    "diffusion_flax_model.msgpack",
    "diffusion_pytorch_model.safetensors",
  ),
  (
    "vae",
    "diffusion_flax_model.msgpack",
    "diffusion_pytorch_model.safetensors",
  ),
  ("text_encoder", "flax_model.msgpack", "model.safetensors"),
  ("text_encoder_2", "flax_model.msgpack", "model.safetensors"),
)


def _check_teacher(folder: str, check, copied) -> dict:
  """The UNet config of an exportable teacher folder.

  Pickles are refused as `sd.build` refuses them. The teacher's UNet
  weights are replaced by the student's (either format will do); the VAE
  and text encoder are copied for PyTorch, so they need safetensors.
  """
  unet_config = check(folder)
  for part, flax_name, pt_name in WEIGHTS:
    if part != "unet" and part not in copied:
      continue
    has = {
      name: os.path.isfile(os.path.join(folder, part, name))
      for name in (flax_name, pt_name)
    }
    if has[pt_name] or (part == "unet" and has[flax_name]):
      continue
    if has[flax_name]:
      raise loading.SDError(
        f"{folder}/{part} has Flax weights only ({flax_name}); the exported "
        f"folder is read by PyTorch: save the {part} with safetensors "
        f"({pt_name}) first"
      )
    raise loading.SDError(
      f"{folder}/{part} has neither {flax_name} nor {pt_name} (PyTorch .bin "
      "files are pickles and are not read: convert them to safetensors)"
    )
  loading.read_json(
    os.path.join(folder, "model_index.json"), "the pipeline index"
  )
  return unet_config


def _check_student(student, unet_config: dict, folder: str) -> None:
  module_config = getattr(student.module, "unet_config", None)
  if module_config is None or student.condition.kind != "text":
    raise ValueError(
      "only Stable Diffusion students (a diffusers UNet reading text "
      "embeddings) can be exported as diffusers folders"
    )
  if json.loads(json.dumps(dict(module_config))) != unet_config:
    raise ValueError(
      f"the student's UNet config differs from {folder}/unet/config.json: "
      "export with the teacher folder the student was distilled from"
    )
  if student.parameterization not in ("direct", "teacher"):
    raise ValueError(f"unknown parameterization {student.parameterization!r}")
  if student.space not in ("signal", "x"):
    raise ValueError(f"unknown student space {student.space!r}")
  if student.prediction not in ("eps", "v", "x0"):
    raise ValueError(f"unknown prediction {student.prediction!r}")
  if student.schedule.kind != "discrete":
    raise ValueError(
      "a diffusers UNet reads integer timesteps: the student's schedule "
      f"must be discrete, not {student.schedule.kind}"
    )


def to_pytorch_unet(unet_config: dict, flax_params):
  """diffusers' PyTorch UNet2DConditionModel holding our UNet's weights
  (`load_weights`)."""
  from diffusers import UNet2DConditionModel  # noqa: PLC0415

  model = UNet2DConditionModel.from_config(unet_config)
  return load_weights(model, flax_params, "UNet2DConditionModel")


def load_weights(model, flax_params, what: str, kept=()):
  """Fills a diffusers PyTorch `model` with our port's weights.

  Every PyTorch weight is named by `models.weights.torch_key` (the rule
  teachers are loaded with, read backwards) and must find its student
  weight with its shape, and every student weight must be used once;
  the state keys in `kept` (buffers the port computes, such as SD3's
  position table) stay as the model made them.

  Raises:
    ValueError: a weight is missing, unused or of another shape.
  """
  import torch  # noqa: PLC0415

  flat = traverse_util.flatten_dict(flax_params)
  state, used = {}, set()
  for key, tensor in model.state_dict().items():
    if key in kept:
      state[key] = tensor
      continue
    fkey, how = weights.torch_key(key, tensor.ndim)
    if fkey not in flat:
      raise ValueError(
        f"diffusers' {what} weight {key} has no student weight "
        f"({'/'.join(fkey)})"
      )
    value = np.asarray(flat[fkey], np.float32)
    value = weights.to_torch(value, how)
    if tuple(value.shape) != tuple(tensor.shape):
      raise ValueError(
        f"student weight {'/'.join(fkey)} has shape {value.shape}, which "
        f"does not fit {key} {tuple(tensor.shape)}"
      )
    state[key] = torch.from_numpy(np.ascontiguousarray(value))
    used.add(fkey)
  unused = sorted(set(flat) - used)
  if unused:
    raise ValueError(
      f"student weight {'/'.join(unused[0])} has no place in diffusers' {what}"
    )
  model.load_state_dict(state, strict=True)
  return model


def _meta(folder: str, student, unet_config: dict) -> dict:
  schedule = student.schedule
  alpha_clean, sigma_clean = schedule.alpha_sigma(np.float32(schedule.t_clean))
  alpha_max, sigma_max = schedule.alpha_sigma(np.float32(schedule.t_max))
  vae_config = loading.read_json(
    os.path.join(folder, "vae", "config.json"), "the VAE"
  )
  guidance = None
  if student.guided:
    guidance = dict(
      file=GUIDANCE_FILE,
      # `layers.GuidanceEmbedding`: sinusoids of `w * scale` (cos, then
      # sin, `max_period`), Dense, SiLU, Dense; added to the output of the
      # UNet's time embedding.
      features=4 * int(unet_config["block_out_channels"][0]),
      scale=float(layers.GuidanceEmbedding.scale),
      max_period=10000.0,
    )
  micro = getattr(student.module, "micro", None)
  if micro is not None:
    # SDXL: the packed condition's layout and the run's time ids.
    micro = dict(
      text_length=int(micro[0]),
      pooled_width=int(micro[1]),
      time_ids=[float(v) for v in micro[2]],
    )
  return dict(
    format=FORMAT,
    parameterization=student.parameterization,
    prediction=student.prediction,
    space=student.space,
    t_clean=_integer_time(schedule.t_clean),
    t_max=_integer_time(schedule.t_max),
    # float32 values; a Python float holds each exactly.
    alpha_clean=float(np.float32(alpha_clean)),
    sigma_clean=float(np.float32(sigma_clean)),
    alpha_max=float(np.float32(alpha_max)),
    sigma_max=float(np.float32(sigma_max)),
    vae_scaling_factor=float(vae_config.get("scaling_factor", 0.18215)),
    guidance=guidance,
    micro_conditioning=micro,
  )


def _integer_time(t: float) -> int:
  if float(t) != int(t):
    raise ValueError(f"time {t} is not an integer timestep")
  return int(t)


def write_model_index(
  folder: str, out_dir: str, copied, network: str = "unet"
) -> None:
  """model_index.json, with components that were not copied set to null."""
  index = loading.read_json(
    os.path.join(folder, "model_index.json"), "the pipeline index"
  )
  kept = set(copied) | {network}
  for key, value in index.items():
    if not key.startswith("_") and isinstance(value, list) and key not in kept:
      index[key] = [None, None]
  with open(os.path.join(out_dir, "model_index.json"), "w") as f:
    json.dump(index, f, indent=2, sort_keys=True)
    f.write("\n")


def write_guidance(params, path: str) -> None:
  """The w embedding's two Dense layers in PyTorch layout."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  tensors = {}
  for i in (0, 1):
    dense = params[f"Dense_{i}"]
    tensors[f"linear_{i + 1}.weight"] = np.ascontiguousarray(
      np.asarray(dense["kernel"], np.float32).T
    )
    tensors[f"linear_{i + 1}.bias"] = np.asarray(dense["bias"], np.float32)
  save_file(tensors, path)


def _one_step_source() -> str:
  """The text of `one_step.py` (this folder), copied into exports."""
  here = os.path.dirname(os.path.abspath(__file__))
  with open(os.path.join(here, "one_step.py"), encoding="utf-8") as f:
    return f.read()
