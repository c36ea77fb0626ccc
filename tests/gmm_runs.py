"""What the mixture acceptance runs share (tests/integration/test_gmm_*.py):
the shipped presets, their short runs, and the report of the student's one
step against the teacher's DDIM-N.

The circle trains configs/gmm.py's preset as it ships (8,000 steps, about
100 s on 2 CPU cores). The other presets train for `SHORT_STEPS` of their
8,000 (the cosine schedule follows the run's length) and must still meet
the thresholds of the presets as shipped: a shorter run that passes is a
stricter check of the same bar, at a third of the suite's time. Each run
measures the student's one step on 4,000 fresh eps against the teacher's
DDIM-N from the same eps (N = the training grid). Training and evaluation
seeds are fixed, so the numbers are reproducible on one machine; the
thresholds are the acceptance criteria, not tuned bounds.
"""

import importlib.util
import json
import pathlib

from boot_jax.evaluation import mixture_eval
from boot_jax.training import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEEDS = (12345, 1, 2)  # evaluation seeds, as benchmarks/refine_mixture.py
# Measured on 2 CPU cores (2026-12-07): random16's agreement 0.9625 at
# 4,000 steps (0.960 at 3,000, 0.971 at 8,000; bar 0.95); circle_cond's
# 1.0 at 1,500 (mse_over_var 5e-4) and 3,000 (bar 0.98); circle_guided's
# (every w) 1.0 at 3,000, and at 1,500 too, but there its error at w = 4
# (mse 0.0043) is no longer under a tenth of the w = 1 to 4 spread (0.042).
SHORT_STEPS = {"random16": 4000, "circle_cond": 1500, "circle_guided": 3000}


def preset_config(preset, short=False):
  """configs/gmm.py's `preset`; with `short`, its `SHORT_STEPS` run."""
  spec = importlib.util.spec_from_file_location("gmm", ROOT / "configs/gmm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  if short:
    assert config.train.steps == 8000  # the preset as shipped
    config.train.steps = SHORT_STEPS[preset]
  return config


def report(setup, params, seed=12345):
  """The student's one step against the teacher's DDIM-N, 4,000 eps."""
  return mixture_eval.gmm_report(
    setup.teacher,
    setup.student,
    params,
    setup.grid,
    setup.config.boot.guidance,
    num=4000,
    seed=seed,
  )


def distil(preset):
  """Trains `preset`'s short run; its report."""
  config = preset_config(preset, short=True)
  setup = trainer.setup(config)
  state, history = trainer.run(setup)
  assert history[-1]["step"] == config.train.steps
  out = report(setup, state.params)
  print(preset, json.dumps(out, sort_keys=True))
  return out
