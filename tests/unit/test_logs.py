"""Progress lines never show a `nan` rate."""

import pytest

from boot_jax.training import logs


@pytest.mark.parametrize("rate", [None, float("nan"), 0.0])
def test_no_rate_yet_is_said_in_words(rate):
  line = logs.progress_line(1, 100, rate, {"loss": 0.5, "delta": 2.0})
  assert line == "step 1/100 (1%) first step done (with compilation) loss=0.5"
  assert "nan" not in line


def test_a_rate_gives_an_eta():
  line = logs.progress_line(50, 100, 12.5, {"loss": 0.25})
  assert line == "step 50/100 (50%) 12.5 steps/s ETA 0:04 loss=0.25"


def test_a_report_flattens_to_scalars():
  from boot_jax.evaluation import evaluator

  report = {
    "agreement": 0.97,
    "num_eval": 200,
    "samplers": {"student": {"fid": 1.5, "name": "one step"}},
    "broken": float("nan"),
    "flag": True,
    "steps": [1, 2],
  }
  assert evaluator.scalars(report) == {
    "eval/agreement": 0.97,
    "eval/num_eval": 200.0,
    "eval/samplers/student/fid": 1.5,
  }
