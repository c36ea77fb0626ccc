"""The data-free progress signal (boot_jax/evaluation/probe.py).

Checked on the analytic circle mixture, against the evaluation's own
teacher DDIM-N (`mixture_eval.teacher_ddim`) and numpy on the same arrays.
"""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from boot_jax.config import recipes
from boot_jax.distill import boot, conditions
from boot_jax.evaluation import mixture_eval
from boot_jax.evaluation import probe as probe_lib
from boot_jax.training import trainer


@pytest.fixture(scope="module")
def setup():
  """The circle's run with both references DDIM-N (probe_fine_factor 1),
  so that the estimators can be checked against one reference."""
  config = recipes.gmm_config("circle")
  config.train.probe_samples = 256
  config.train.probe_fine_factor = 1
  return trainer.setup(config)


def _stub(teacher, grid, transform, timesteps=None):
  """A 'student' whose one step is `transform` of the teacher's DDIM-N (or
  its DDIM on `timesteps`)."""
  ts = grid.ddim_timesteps() if timesteps is None else timesteps

  def generate(params, eps, cond=None, guidance=None):
    del params, guidance
    return transform(teacher.ddim(teacher.params, eps, ts, cond, None))

  return types.SimpleNamespace(guided=False, generate=generate)


def _probe(setup, transform):
  lines = []
  probe = probe_lib.make_probe(
    setup.teacher,
    _stub(setup.teacher, setup.grid, transform),
    setup.grid,
    setup.mesh,
    setup.config,
    lines.append,
  )
  return probe, lines


def test_a_student_on_the_teachers_trajectories_scores_zero(setup):
  probe, lines = _probe(setup, lambda x: x)
  m = probe(None)
  # Both sets equal: every sum of the estimate is the same sum (float32
  # rounding only).
  assert m["probe_mse"] <= 1e-10 and abs(m["probe_mmd2"]) <= 1e-6, m
  # The line before the teacher's one-off DDIM, then nothing more.
  assert len(lines) == 1 and "DDIM-32 on 256 held-out noises" in lines[0]
  probe(None)
  assert len(lines) == 1


def test_mse_is_per_element_over_the_references_variance(setup):
  """A shift c of every coordinate: mse = c^2 / mean variance, computed
  here with numpy from the evaluation's DDIM-N on the probe's noise."""
  probe, _ = _probe(setup, lambda x: x + 0.3)
  m = probe(None)
  eps, cond = conditions.eval_inputs(setup.teacher, 256, probe_lib.PROBE_SEED)
  ref = np.asarray(
    mixture_eval.teacher_ddim(setup.teacher, setup.grid, eps, cond, None, 256)
  )
  np.testing.assert_allclose(
    m["probe_mse"], 0.09 / ref.var(axis=0).mean(), rtol=1e-4
  )
  assert m["probe_mmd2"] > 0.05


def test_mmd_compares_distributions_not_pairs(setup):
  """The reference's own samples in another order: every pair is wrong
  (mse about 2: two independent draws), the distribution is the same, so
  the MMD^2 estimate stays at its sampling noise (O(1 / n); measured
  -0.018 at n = 256), well below a student whose samples are all 10%
  too close to the origin (measured 0.060), whose pairs are close."""
  rolled = _probe(setup, lambda x: jnp.roll(x, 1, axis=0))[0](None)
  shrunk = _probe(setup, lambda x: 0.9 * x)[0](None)
  assert rolled["probe_mse"] > 1.0 > 0.1 > shrunk["probe_mse"]
  assert abs(rolled["probe_mmd2"]) < 0.5 * shrunk["probe_mmd2"]


def test_the_distribution_is_measured_against_a_finer_ddim(setup):
  """With the default factor 16, `probe_mmd2`'s reference is the teacher's
  DDIM-512 (the circle's N is 32) and `probe_mse`'s still DDIM-32: a
  student on DDIM-512's samples scores an MMD^2 of 0 (the same sets) and a
  small but non-zero mse, and the one line names both references."""
  config = recipes.gmm_config("circle")
  assert config.train.probe_fine_factor == 16  # the shipped default
  config.train.probe_samples = 256
  fine = boot.make_grid(setup.teacher.schedule, 512).ddim_timesteps()
  assert fine[0] == 999 and len(fine) == 512
  lines = []
  probe = probe_lib.make_probe(
    setup.teacher,
    _stub(setup.teacher, setup.grid, lambda x: x, fine),
    setup.grid,
    setup.mesh,
    config,
    lines.append,
  )
  m = probe(None)
  assert abs(m["probe_mmd2"]) <= 1e-6, m
  assert 1e-8 < m["probe_mse"] < 0.05, m
  assert lines == [
    "probe: the teacher's DDIM-32 and DDIM-512 on 256 held-out noises "
    "(once; train.probe_samples=0 turns it off)"
  ]
  # No finer than a discrete table's own steps (1,000 here).
  config.train.probe_fine_factor = 100
  probe = probe_lib.make_probe(
    setup.teacher, None, setup.grid, setup.mesh, config
  )
  assert probe.fine_steps == setup.teacher.schedule.num_train_steps == 1000


def test_size_and_switch(setup):
  config = recipes.gmm_config("circle")
  assert probe_lib.probe_size(config) == 256  # the default, <= the batch
  config.train.batch_size = 16
  assert probe_lib.probe_size(config) == 16
  config.train.batch_size = 8  # too few to say anything: no probe
  assert probe_lib.make_probe(None, None, None, None, config) is None
  config.train.batch_size = 256
  config.train.probe_samples = 0
  assert probe_lib.make_probe(None, None, None, None, config) is None
  config.boot.guidance_range = (1.0, 3.0)
  assert probe_lib.probe_guidance(config) == 2.0


def test_the_loop_logs_it(setup):
  state = setup.init_state()
  _, history = trainer.run(
    setup,
    state=state,
    until=2,
    probe=probe_lib.make_probe(
      setup.teacher, setup.student, setup.grid, setup.mesh, setup.config
    ),
  )
  assert {"probe_mse", "probe_mmd2"} <= set(history[-1])
  assert np.isfinite(history[-1]["probe_mse"])
