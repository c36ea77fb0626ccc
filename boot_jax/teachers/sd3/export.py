"""Exports a Stable Diffusion 3 student as a diffusers (PyTorch) folder.

`export_diffusers` writes

    OUT/transformer/            the student's weights as diffusers'
                                PyTorch SD3Transformer2DModel
    OUT/vae/, text_encoder/,    copies of the teacher folder's (T5's only
        text_encoder_2/, ...,   when the student was distilled with it;
        scheduler/              PyTorch pickles are never copied)
    OUT/model_index.json        current `StableDiffusion3Pipeline.
                                from_pretrained` loads the folder
    OUT/boot_student.json       what the one-step function needs
    OUT/boot_guidance.safetensors
                                a guidance-conditioned student's w
                                embedding (only for such students)
    OUT/one_step.py             a self-contained PyTorch one-step sampler

`one_step.py` (teachers/sd3/one_step.py) computes what
`Student.generate` followed by the VAE computes in JAX: the transformer
once at the clean time `t = 0`, the parameterisation (the output read as
the flow velocity at `t = 1`: `x0 = eps - u`), and the VAE with the
folder's scaling and shift factors. The transformer is not a multi-step
denoiser: use it through `one_step.py`, not the pipeline's scheduler
loop. `boot_student.json` has the keys of the `sd` family's
(teachers/sd/export.py) with times in [0, 1], and `vae_shift_factor`.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from boot_jax.models import layers
from boot_jax.teachers import folders
from boot_jax.teachers.sd import export as sd_export
from boot_jax.teachers.sd3 import loading

README = """## PyTorch: `diffusers/` and `one_step.py`

`diffusers/` holds the student as a Stable Diffusion 3 diffusers folder
(its transformer, the teacher's VAE, text encoders, tokenizers and
scheduler) and `one_step.py`, the one-step sampler in PyTorch. It needs
torch, diffusers and transformers (and safetensors for a
guidance-conditioned student):

```python
import importlib.util
import torch

spec = importlib.util.spec_from_file_location(
  "one_step", "diffusers/one_step.py"
)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
noise = torch.randn(1, 16, 128, 128)  # latents: resolution / 8
images = module.one_step("diffusers", ["a red square"], noise)  # NCHW
```

The transformer is not a multi-step denoiser: use it through
`one_step.py`, not the pipeline's scheduler loop.
"""

COPIED = (
  "vae",
  "text_encoder",
  "text_encoder_2",
  "tokenizer",
  "tokenizer_2",
  "scheduler",
)


def export_diffusers(
  teacher_folder: str, params, student, out_dir: str, t5: bool = True
) -> dict:
  """Writes an SD3 student as a diffusers folder (module doc); returns
  the contents of `boot_student.json`.

  Args:
    teacher_folder: the teacher's diffusers SD3 folder.
    params: the student's parameters, `{"transformer": ...}` (with its
      `GuidanceEmbedding_0` for a guidance-conditioned student).
    student: the `distill.student.Student`.
    out_dir: the folder to write; it must not exist or be empty.
    t5: the student was distilled with T5 (its parts are copied; without
      it the pipeline conditions on zeros, as the student was).

  Raises:
    loading.SD3Error: the teacher folder cannot be exported.
    ValueError: the student or its parameters do not fit the folder, or
      `out_dir` is not empty.
  """
  cfg = loading.check_folder(teacher_folder, t5)
  module_config = getattr(student.module, "transformer_config", None)
  if module_config is None or student.condition.kind != "text":
    raise ValueError(
      "only Stable Diffusion 3 students can be exported as SD3 folders"
    )
  if json.loads(json.dumps(dict(module_config))) != cfg:
    raise ValueError(
      f"the student's transformer config differs from {teacher_folder}/"
      "transformer/config.json: export with the teacher folder the student "
      "was distilled from"
    )
  if os.path.exists(out_dir) and (
    not os.path.isdir(out_dir) or os.listdir(out_dir)
  ):
    raise ValueError(f"export folder {out_dir} exists and is not empty")
  params = jax.tree.map(
    lambda p: np.array(p, np.float32), jax.device_get(params)
  )
  if set(params) != {"transformer"}:
    raise ValueError(
      f"the student parameters have {sorted(params)}, not a transformer: "
      "not a Stable Diffusion 3 student's parameters"
    )
  net = dict(params["transformer"])
  guidance = net.pop(sd_export.GUIDANCE_PARAMS, None)
  if student.guided != (guidance is not None):
    raise ValueError(
      "the student's guidance embedding does not match its parameters"
    )
  from diffusers import SD3Transformer2DModel  # noqa: PLC0415

  model = sd_export.load_weights(
    SD3Transformer2DModel.from_config(cfg),
    net,
    "SD3Transformer2DModel",
    kept=(loading.POSITIONS,),
  )
  copied = COPIED + (loading.T5_PARTS if t5 else ())
  meta = _meta(teacher_folder, student, cfg)
  os.makedirs(out_dir, exist_ok=True)
  model.save_pretrained(
    os.path.join(out_dir, "transformer"), safe_serialization=True
  )
  for part in copied:
    shutil.copytree(
      os.path.join(teacher_folder, part),
      os.path.join(out_dir, part),
      ignore=shutil.ignore_patterns(*sd_export.PICKLES),
    )
  sd_export.write_model_index(teacher_folder, out_dir, copied, "transformer")
  if guidance is not None:
    sd_export.write_guidance(
      guidance, os.path.join(out_dir, sd_export.GUIDANCE_FILE)
    )
  with open(
    os.path.join(out_dir, sd_export.META_FILE), "w", encoding="utf-8"
  ) as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  here = os.path.dirname(os.path.abspath(__file__))
  shutil.copyfile(
    os.path.join(here, "one_step.py"),
    os.path.join(out_dir, sd_export.ONE_STEP_FILE),
  )
  return meta


def _meta(folder: str, student, cfg: dict) -> dict:
  schedule = student.schedule
  alpha_clean, sigma_clean = schedule.alpha_sigma(np.float32(schedule.t_clean))
  alpha_max, sigma_max = schedule.alpha_sigma(np.float32(schedule.t_max))
  vae = folders.read_json(
    os.path.join(folder, "vae", "config.json"), "the VAE", loading.SD3Error
  )
  guidance = None
  if student.guided:
    guidance = dict(
      file=sd_export.GUIDANCE_FILE,
      # `layers.GuidanceEmbedding`, added to the transformer's
      # conditioning vector (the output of `time_text_embed`).
      features=int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"]),
      scale=float(layers.GuidanceEmbedding.scale),
      max_period=10000.0,
    )
  return dict(
    format=sd_export.FORMAT,
    parameterization=student.parameterization,
    prediction=student.prediction,
    space=student.space,
    t_clean=float(schedule.t_clean),
    t_max=float(schedule.t_max),
    alpha_clean=float(np.float32(alpha_clean)),
    sigma_clean=float(np.float32(sigma_clean)),
    alpha_max=float(np.float32(alpha_max)),
    sigma_max=float(np.float32(sigma_max)),
    vae_scaling_factor=float(vae.get("scaling_factor", 1.5305)),
    vae_shift_factor=float(vae.get("shift_factor") or 0.0),
    guidance=guidance,
  )
