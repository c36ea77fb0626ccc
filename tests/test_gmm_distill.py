"""BOOT end to end on the analytic mixtures: the acceptance runs.

Each run trains configs/gmm.py's preset as it ships (8,000 steps, about
100 s on 2 CPU cores) and measures the student's one step on 4,000 fresh
eps against the teacher's DDIM-N from the same eps (N = the training grid).
Training and evaluation seeds are fixed, so the numbers are reproducible on
one machine; the thresholds are the acceptance criteria, not tuned bounds.
"""

import importlib.util
import json
import pathlib

import pytest

from boot_jax import conditions, evaluate, loop, mixture_eval, train

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _config(preset):
  spec = importlib.util.spec_from_file_location("gmm", ROOT / "configs/gmm.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def _distil(preset):
  config = _config(preset)
  setup = loop.setup(config)
  state, history = loop.run(setup)
  assert history[-1]["step"] == config.train.steps
  report = mixture_eval.gmm_report(
    setup.teacher,
    setup.student,
    state.params,
    setup.grid,
    config.boot.guidance,
    num=4000,
  )
  print(preset, json.dumps(report, sort_keys=True))
  return report


def test_circle_2d():
  r = _distil("circle")
  assert r["num_eval"] == 4000 and r["num_grid_steps"] == 32
  assert r["agreement"] >= 0.98
  assert r["mse_over_var"] <= 0.01
  assert r["weight_error"] <= 0.02
  assert r["mmd_ratio"] <= 3.0


def test_random_16d():
  r = _distil("random16")
  assert r["agreement"] >= 0.95


def test_circle_class_conditional_guided():
  config = _config("circle_cond")
  assert config.boot.guidance == 2.0
  r = _distil("circle_cond")
  assert r["agreement"] >= 0.98


def test_guidance_conditioned_student():
  """One student for every w: trained on w ~ U[0.5, 4.5], then checked at
  w = 1, 2 and 4 against the teacher's DDIM-N guided with the same w, to
  the class-conditional run's threshold."""
  config = _config("circle_guided")
  setup = loop.setup(config)
  assert setup.student.guided
  state, _ = loop.run(setup)
  report = evaluate.evaluate(setup.model, state.params)
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


def test_train_cli_writes_workdir(tmp_path, capsys):
  """The main job on a short run: resolved config, metrics and eval."""
  config = _config("circle")
  config.train.steps = 200
  config.train.log_every = 100
  config.eval.num_samples = 500
  report = train.train_and_evaluate(config, str(tmp_path))
  resolved = json.loads((tmp_path / "config.json").read_text())
  assert len(resolved["teacher"]["means"]) == 8
  assert resolved["teacher"]["weights"] == [0.125] * 8
  rows = [
    json.loads(line)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["step"] for r in rows] == [100, 200]
  assert all("loss_bs" in r and "wall_time" in r for r in rows)
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["agreement"] == report["agreement"]
  assert "ETA" in capsys.readouterr().out
