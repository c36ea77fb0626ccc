"""Config values are refused at start, in one line that names the key."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest

from boot_jax.config import defaults, recipes
from boot_jax.training import teacher_run

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config():
  return recipes.gmm_config("circle")


@pytest.mark.parametrize(
  "key,value,expected",
  [
    ("optim.ema_decay", 1.0, "optim.ema_decay must be in [0, 1)"),
    ("optim.ema_decay", 1.5, "optim.ema_decay must be in [0, 1)"),
    ("optim.ema_decay", -0.1, "optim.ema_decay must be in [0, 1)"),
    ("optim.ema_decay", float("nan"), "optim.ema_decay must be in [0, 1)"),
    ("optim.lr", float("nan"), "optim.lr must be finite and > 0"),
    ("optim.lr", -1.0, "optim.lr must be finite and > 0"),
    ("optim.lr", float("inf"), "optim.lr must be finite and > 0"),
    ("optim.b1", 2.0, "optim.b1 must be in [0, 1)"),
    ("optim.b2", 1.0, "optim.b2 must be in [0, 1)"),
    ("optim.eps", 0.0, "optim.eps must be finite and > 0"),
    ("optim.weight_decay", -1.0, "optim.weight_decay must be finite"),
    ("optim.grad_clip", float("nan"), "optim.grad_clip must be finite"),
    ("optim.warmup_steps", -5, "optim.warmup_steps must be an integer >= 0"),
    ("optim.final_lr_fraction", 2.0, "optim.final_lr_fraction must be in"),
    ("optim.schedule", "linear", "optim.schedule must be"),
    ("train.seed", -1, "train.seed must be an integer in [0, 2^63 - 1]"),
    ("train.seed", 2**70, "train.seed must be an integer in [0, 2^63 - 1]"),
    ("eval.seed", -3, "eval.seed must be an integer"),
    ("refine.seed", -1, "refine.seed must be an integer"),
    ("train.probe_samples", -1, "train.probe_samples must be an integer"),
    ("train.probe_fine_factor", 0, "train.probe_fine_factor must be an"),
    ("train.probe_fine_factor", 10**6, "train.probe_fine_factor must be an"),
    ("boot.time_sampling", "late", "boot.time_sampling must be one of"),
    ("boot.guidance", -1.0, "boot.guidance must be >= 0"),
    ("model.remat", "everything", "model.remat='everything': expected one"),
  ],
)
def test_bad_values_are_refused_naming_the_key(key, value, expected):
  config = _config()
  section, name = key.split(".")
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(ValueError) as e:
    defaults.validate(config)
  assert expected in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "key,value",
  [
    ("optim.ema_decay", None),
    ("optim.ema_decay", 0.0),
    ("optim.ema_decay", 0.9999),
    ("optim.grad_clip", None),
    ("optim.grad_clip", 0.0),
    ("optim.warmup_steps", 0),
    ("train.seed", 2**63 - 1),
    ("train.probe_samples", 0),
    ("train.probe_fine_factor", 1),
    ("train.probe_fine_factor", 64),
  ],
)
def test_edge_values_that_make_sense_are_accepted(key, value):
  config = _config()
  section, name = key.split(".")
  with config.unlocked():
    config[section][name] = value
  defaults.validate(config)


def _shipped():
  """(name, config) of every config file in configs/, each variant."""
  out = []
  for path in sorted(ROOT.glob("configs/*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg in getattr(module, "ARGS", ("",)):
      out.append(
        (f"{path.stem}:{arg}", module.get_config(*([arg] if arg else [])))
      )
  return out


def test_every_shipped_config_validates():
  shipped = _shipped()
  assert len(shipped) >= 10
  for name, config in shipped:
    if name.startswith("digits_teacher"):
      teacher_run.validate(config)  # a teacher config (train_teacher's)
    else:
      defaults.validate(config)


def _reads(path: pathlib.Path):
  """(section, key) of every `config.SECTION.KEY` and
  `config.SECTION.get("KEY")` read in a module's code."""
  text = path.read_text()
  pattern = re.compile(r"\bconfig\.(\w+)(?:\.get\(\s*\"(\w+)\"|\.(\w+)\b)")
  for m in pattern.finditer(text):
    section, key = m.group(1), m.group(2) or m.group(3)
    if key not in ("get", "to_dict", "items", "keys", "unlocked", "lock"):
      yield section, key


def test_code_reads_only_declared_keys():
  """A key the code reads through `config.SECTION...` is declared in the
  defaults (teacher training: in its recipe). The teacher section is each
  family's own and is left out; reads through other names (`t.steps`
  after `t = config.train`) are not seen by this check."""
  boot = defaults.base_config().to_dict()
  teacher = recipes.digits_teacher_config().to_dict()
  undeclared = []
  for path in sorted((ROOT / "boot_jax").rglob("*.py")):
    schema = teacher if path.name == "teacher_run.py" else boot
    for section, key in _reads(path):
      if section == "teacher" or section not in schema:
        continue
      if not isinstance(schema[section], dict) or key not in schema[section]:
        undeclared.append(f"{path.relative_to(ROOT)}: {section}.{key}")
  assert not undeclared, undeclared


def test_settings_are_validated_once_and_read_only():
  settings = defaults.freeze(_config())
  assert isinstance(settings, defaults.Settings)
  assert defaults.freeze(settings) is settings  # no second validation
  with pytest.raises((AttributeError, ValueError)):
    settings.optim.lr = 1.0
  with pytest.raises(AttributeError):
    _ = settings.train.no_such_key
  derived = defaults.derive(settings, eval=dict(num_samples=3))
  assert derived.eval.num_samples == 3
  assert derived.train == settings.train


@pytest.mark.parametrize(
  "key,value,expected",
  [
    ("train.steps", "ten", "train.steps must be an integer, got 'ten'"),
    ("optim.lr", "fast", "optim.lr must be a number, got 'fast'"),
    ("train.steps", 2.5, "train.steps must be an integer, got 2.5"),
  ],
)
def test_a_value_of_the_wrong_type_is_refused_in_one_line(key, value, expected):
  config = _config()
  section, name = key.split(".")
  with config[section].ignore_type():
    config[section][name] = value
  with pytest.raises(ValueError) as error:
    defaults.freeze(config)
  assert str(error.value) == expected


def test_building_settings_leaves_the_callers_config_unchanged():
  """The teacher's derived fields go into a new view, not into the
  ConfigDict the caller holds (a program may save it as given)."""
  from boot_jax.sampling import inference

  config = _config()
  before = config.to_dict()
  settings = inference.settings(config)
  assert config.to_dict() == before
  assert isinstance(settings, defaults.Settings)
  assert len(settings.teacher.means) == config.teacher.num_components


def test_section_builders_replace_only_known_fields():
  """`unet_model` and `gmm_teacher` start from the shipped sections."""
  assert recipes.unet_model() == recipes.digits_unet()
  assert recipes.unet_model(channels=8).channels == 8
  assert recipes.gmm_config("circle").teacher == recipes.gmm_teacher()
  random16 = recipes.gmm_config("random16").teacher
  assert (random16.dim, random16.layout) == (16, "random")
  with pytest.raises(ValueError, match="unknown unet model keys"):
    recipes.unet_model(chanels=8)
  with pytest.raises(ValueError, match="unknown gmm teacher keys"):
    recipes.gmm_teacher(components=3)


def test_sweep_mixtures_keep_their_documented_ranges():
  """`recipes.sweep_mixture` draws what its docstring promises, the same
  mixture every time, and `configs/gmm.py:sweepI` trains on exactly it."""
  dims = []
  for i in range(40):
    mix = recipes.sweep_mixture(i)
    means, stds, weights = mix["means"], mix["stds"], mix["weights"]
    k, dim = means.shape
    dims.append(dim)
    assert dim == (2 if i % 2 == 0 else 8) and 4 <= k <= 16
    assert 1.5 <= mix["scale"] <= 3.0
    dist = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    assert dist.min() >= 0.15 * mix["scale"]
    assert np.all(stds <= 0.25) and np.all(stds <= dist.min(1) / 5 + 1e-12)
    assert np.all(stds >= min(0.06, dist.min() / 5))
    assert np.isclose(weights.sum(), 1.0) and weights.max() <= 4 * weights.min()
    if dim == 2:
      assert np.all(np.linalg.norm(means, axis=1) <= mix["scale"])
  assert set(dims) == {2, 8}
  again = recipes.sweep_mixture(5)
  np.testing.assert_array_equal(
    again["means"], recipes.sweep_mixture(5)["means"]
  )
  assert not np.allclose(again["stds"], again["stds"][0])  # unequal stds
  config = recipes.gmm_config("sweep5")
  np.testing.assert_array_equal(config.teacher.means, again["means"])
  np.testing.assert_array_equal(config.teacher.weights, again["weights"])
  assert config.teacher.dim == 8 and config.refine == _config().refine
  with pytest.raises(ValueError, match="unknown gmm preset 'sweep'"):
    recipes.gmm_config("sweep")
  with pytest.raises(ValueError, match="index must be >= 0"):
    recipes.sweep_mixture(-1)


def test_the_remat_policy_follows_train_remat_unless_named():
  """model.remat 'auto' keeps what train.remat said (the shipped SD configs
  set it); a named policy wins over it."""
  config = _config()
  assert defaults.remat(config) == "none"
  config.train.remat = True
  assert defaults.remat(config) == "block"
  config.model.remat = "dots"
  assert defaults.remat(config) == "dots"
  config.model.remat = "none"
  assert defaults.remat(config) == "none"
  # Older configs without the key follow train.remat.
  assert defaults.remat({"train": {"remat": True}}) == "block"


def test_a_schedule_section_is_set_by_name():
  """`defaults.named_schedule` (what `--config.teacher.schedule=NAME`
  applies) turns a schedule section into the named schedule, keeping the
  keys it does not name, and refuses other names in one line."""
  from boot_jax.diffusion import predictions

  section = defaults.discrete_schedule("linear")
  section.shift = 3.0
  defaults.named_schedule(section, "rectified_flow")
  schedule = predictions.make_schedule(section)
  assert (schedule.kind, schedule.name, schedule.shift) == (
    "continuous",
    "rectified_flow",
    3.0,
  )
  defaults.named_schedule(section, "scaled_linear")
  assert predictions.make_schedule(section).kind == "discrete"
  assert section.beta_start == 0.0001  # the section's range is kept
  with pytest.raises(ValueError, match="unknown schedule 'flow'"):
    defaults.named_schedule(section, "flow")


def test_a_fresh_students_time_scale_follows_the_schedule():
  """Unset, the mixture student's time scale is 1 on a DDPM table and
  1000 on a continuous path; a run saved with the value (the previous
  release wrote 1.0) and one asking for the default compare equal."""
  from boot_jax import teachers
  from boot_jax.distill import student as student_lib
  from boot_jax.runtime import workdir

  circle, flow = recipes.gmm_config("circle"), recipes.gmm_config("circle_flow")
  assert circle.student.model.time_scale is None
  for config, scale in ((circle, 1.0), (flow, 1000.0)):
    teacher = teachers.build_teacher(config.teacher)
    student, _ = student_lib.build_student(teacher, config.student, None)
    assert student.module.time_scale == scale
  old = circle.to_dict()
  old["student"]["model"]["time_scale"] = 1.0
  assert workdir.config_differences(old, circle.to_dict()) == []
  old["student"]["model"]["time_scale"] = 1000.0
  assert workdir.config_differences(old, circle.to_dict())
