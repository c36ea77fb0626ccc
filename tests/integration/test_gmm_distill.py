"""BOOT end to end on the analytic mixtures: the acceptance runs.

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

import numpy as np
import pytest
from conftest import tb_tags

from boot_jax.distill import conditions
from boot_jax.evaluation import evaluator, mixture_eval
from boot_jax.training import boot_run, trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
SEEDS = (12345, 1, 2)  # evaluation seeds, as benchmarks/refine_mixture.py
# Measured on 2 CPU cores (2026-12-07): random16's agreement 0.9625 at
# 4,000 steps (0.960 at 3,000, 0.971 at 8,000; bar 0.95); circle_cond's
# 1.0 at 1,500 (mse_over_var 5e-4) and 3,000 (bar 0.98); circle_guided's
# (every w) 1.0 at 3,000, and at 1,500 too, but there its error at w = 4
# (mse 0.0043) is no longer under a tenth of the w = 1 to 4 spread (0.042).
SHORT_STEPS = {"random16": 4000, "circle_cond": 1500, "circle_guided": 3000}


def _config(preset, short=False):
  spec = importlib.util.spec_from_file_location("gmm", ROOT / "configs/gmm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  if short:
    assert config.train.steps == 8000  # the preset as shipped
    config.train.steps = SHORT_STEPS[preset]
  return config


def _report(setup, params, seed=12345):
  return mixture_eval.gmm_report(
    setup.teacher,
    setup.student,
    params,
    setup.grid,
    setup.config.boot.guidance,
    num=4000,
    seed=seed,
  )


def _distil(preset):
  config = _config(preset, short=True)
  setup = trainer.setup(config)
  state, history = trainer.run(setup)
  assert history[-1]["step"] == config.train.steps
  report = _report(setup, state.params)
  print(preset, json.dumps(report, sort_keys=True))
  return report


def test_circle_2d_then_refinement():
  """BOOT's acceptance on the circle, then the preset's refinement phase
  (boot.refine, 1,000 steps) from that student: its MMD to exact samples
  over the teacher DDIM-32's, mean over 3 evaluation seeds, is <= 1.1
  (BOOT alone: 1.14) and its component weights, from 200,000 samples, are
  within 0.01 of the mixture's (docs/BENCHMARKS.md: the refined student
  measured 0.998 and 0.003 there)."""
  config = _config("circle")
  config.boot.refine = True
  assert config.refine.steps == 1000
  setup = trainer.setup(config)
  state, _ = trainer.run(setup, until=config.train.steps)
  r = _report(setup, state.params)
  print("circle", json.dumps(r, sort_keys=True))
  assert r["num_eval"] == 4000 and r["num_grid_steps"] == 32
  assert r["agreement"] >= 0.98
  assert r["mse_over_var"] <= 0.01
  assert r["weight_error"] <= 0.02
  assert r["mmd_ratio"] <= 3.0

  state, history = trainer.run(setup, state=state)
  assert history[-1]["step"] == config.train.steps + 1000
  ratios = [_report(setup, state.params, seed)["mmd_ratio"] for seed in SEEDS]
  weights = mixture_eval.weight_error(
    setup.teacher, setup.student, state.params
  )
  print("circle refined", ratios, weights)
  assert np.mean(ratios) <= 1.1, ratios
  assert weights <= 0.01, weights


def test_random_16d():
  r = _distil("random16")
  assert r["agreement"] >= 0.95


def test_circle_class_conditional_guided():
  config = _config("circle_cond", short=True)
  assert config.boot.guidance == 2.0
  r = _distil("circle_cond")
  assert r["agreement"] >= 0.98


def test_guidance_conditioned_student():
  """One student for every w: trained on w ~ U[0.5, 4.5], then checked at
  w = 1, 2 and 4 against the teacher's DDIM-N guided with the same w, to
  the class-conditional run's threshold."""
  config = _config("circle_guided", short=True)
  setup = trainer.setup(config)
  assert setup.student.guided
  state, _ = trainer.run(setup)
  report = evaluator.evaluate(setup.model, state.params)
  print("circle_guided", json.dumps(report, sort_keys=True))
  for w in (1, 2, 4):
    assert report[f"num_eval@w={w}"] == 4000
    assert report[f"agreement@w={w}"] >= 0.98, report
    assert report[f"mse_over_var@w={w}"] <= 0.01, report
  # Here every w picks the same component, so agreement alone cannot tell
  # a student that ignores w: the teacher's own outputs at w = 1 and w = 4
  # differ by far more than the student's error at either.
  eps, cond = conditions.eval_inputs(setup.teacher, 4000, config.eval.seed)
  ref = {
    w: mixture_eval.teacher_ddim(setup.teacher, setup.grid, eps, cond, w, 1000)
    for w in (1.0, 4.0)
  }
  spread = float(((ref[1.0] - ref[4.0]) ** 2).mean())
  for w in (1, 4):
    assert report[f"mse@w={w}"] < spread / 10, (spread, report)


def test_a_mixture_nobody_tuned_for():
  """BOOT + the refinement with the shipped defaults on a random mixture
  of the sweep's generator (`configs/gmm.py:sweep7`: 8-D, 6 components of
  unequal std and weight; no setting of its own): MMD ratio to the
  teacher's DDIM-N <= 1.3, mean over 3 evaluation seeds.

  BOOT runs 1,500 of the preset's 8,000 steps (a stricter check of the
  same bar, as `SHORT_STEPS`), then the refinement's 1,000 as shipped.
  Measured on 2 CPU cores (2026-12-07): 0.93 after the refinement (0.87
  to 0.96 over the seeds; 1.08 after BOOT at the first seed), about 70 s;
  with 3,000 BOOT steps 0.66. The whole sweep's numbers, this mixture's
  with 8,000 BOOT steps among them, are in docs/BENCHMARKS.md."""
  config = _config("sweep7")
  assert config.teacher.dim == 8 and config.teacher.num_components == 6
  config.train.steps = 1500
  config.boot.refine = True
  setup = trainer.setup(config)
  state, history = trainer.run(setup)
  assert history[-1]["step"] == 1500 + config.refine.steps
  ratios = [_report(setup, state.params, seed)["mmd_ratio"] for seed in SEEDS]
  print("sweep7 refined", ratios)
  assert np.mean(ratios) <= 1.3, ratios


def test_train_cli_writes_workdir(tmp_path, capsys):
  """The main job on a short run: resolved config, metrics and eval."""
  config = _config("circle")
  config.train.steps = 200
  config.train.log_every = 100
  config.eval.num_samples = 500
  report = boot_run.train_and_evaluate(config, str(tmp_path))
  resolved = json.loads((tmp_path / "config.json").read_text())
  assert len(resolved["teacher"]["means"]) == 8
  assert resolved["teacher"]["weights"] == [0.125] * 8
  rows = [
    json.loads(line)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["step"] for r in rows] == [100, 200]
  assert all("loss_bs" in r and "wall_time" in r for r in rows)
  # The data-free progress signal, every logged step.
  assert all(r["probe_mse"] >= 0 and r["probe_mmd2"] >= 0 for r in rows)
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["agreement"] == report["agreement"]
  assert "ETA" in capsys.readouterr().out
  # The final evaluation's numbers are in TensorBoard too.

  tags = {}
  for events in (tmp_path / "tb").glob("events.out.tfevents*"):
    tags.update(tb_tags(events.read_bytes()))
  assert tags["eval/agreement"] == [(200, "scalar")]
  assert tags["probe_mmd2"] == [(100, "scalar"), (200, "scalar")]
