"""The programs' shared plumbing: every failure leaves as one line."""

import subprocess
import sys
import types

import pytest

_BODY = """
import signal, sys
from boot_jax.runtime import cli
class Stop(RuntimeError):
  signum = signal.SIGTERM
with cli.one_line_errors():
  raise {exc}
"""


@pytest.mark.parametrize(
  "exc,code,expected",
  [
    (
      "KeyboardInterrupt()",
      130,
      "interrupted (Ctrl-C); what was saved before is kept",
    ),
    ("ValueError('bad value')", 1, "bad value"),
    ("FileNotFoundError('no such file')", 1, "no such file"),
    ("FloatingPointError('loss is nan')", 1, "loss is nan"),
    ("Stop('received SIGTERM')", 128 + 15, "received SIGTERM"),
  ],
)
def test_one_line_errors(exc, code, expected):
  proc = subprocess.run(
    [sys.executable, "-c", _BODY.format(exc=exc)],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert proc.returncode == code, proc.stderr
  assert lines == [f"error: {expected}"], proc.stderr


@pytest.mark.parametrize(
  "program,names",
  [
    ("sample", ("workdir", "out", "noise", "prompts_file", "mesh", "dtype")),
    (
      "evaluate",
      ("protocol", "clip", "inception", "reference", "mesh", "dtype"),
    ),
    ("export", ("workdir", "out", "overwrite", "platforms", "dtype")),
    ("train", ("config", "workdir", "distributed", "coordinator")),
    ("train_teacher", ("config", "workdir")),
  ],
)
def test_help_lists_every_flag(program, names):
  """--help shows the flags declared in the shared plumbing too (absl's
  own --help shows only the main module's)."""
  proc = subprocess.run(
    [sys.executable, "-m", f"boot_jax.{program}", "--help"],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  for name in names:
    shown = (f"  --{name}:", f"  --[no]{name}:")  # booleans: --[no]name
    assert any(s in proc.stdout for s in shown), name


def test_evaluate_refuses_bad_text_inputs_before_loading(tmp_path):
  """`evaluate --protocol text` reads the captions and looks for CLIP's
  config.json in `check_flags`, before the run (and its teacher) loads."""
  from boot_jax import evaluate  # noqa: PLC0415

  captions = tmp_path / "captions.txt"
  captions.write_text("a red square\n")
  (tmp_path / "empty.txt").write_text("\n  \n")
  clip = tmp_path / "clip"
  clip.mkdir()

  def flags(**over):
    f = dict(protocol="text", captions=str(captions), clip=str(clip))
    f.update(reference=None, inception=None, num_captions=8)
    f.update(over)
    return {k: types.SimpleNamespace(value=v) for k, v in f.items()}

  for over, expected in (
    (dict(captions=str(tmp_path / "empty.txt")), "no prompts"),
    (dict(captions=str(tmp_path / "missing.txt")), "missing.txt"),
    ({}, "not a CLIP folder"),
    (dict(num_captions=0), "--num_captions must be >= 1"),
    (dict(clip=None), "--protocol text needs --clip"),
    (dict(reference=str(captions)), "--protocol text needs --inception"),
  ):
    with pytest.raises((ValueError, OSError), match=expected):
      evaluate.check_flags(flags(**over))
  (clip / "config.json").write_text("{}")
  evaluate.check_flags(flags())  # passes: the folder is read later


_NONE_BODY = """
import sys
from ml_collections import config_flags
from boot_jax.runtime import cli
f = config_flags.DEFINE_config_file("config")
cli.parse_flags(sys.argv)
c = cli.config_value(f)
print(c.boot.guidance, c.boot.guidance_range, c.teacher.thresholding)
"""


def test_config_keys_can_be_set_to_none():
  """`--config.KEY=None` unsets an optional key (ml_collections alone
  parses "None" as the key's type and fails for a float); an unknown or
  required key is one line."""

  def run(*args):
    return subprocess.run(
      [sys.executable, "-c", _NONE_BODY, "--config", "configs/sd15.py", *args],
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
    )

  proc = run(
    "--config.boot.guidance=null",
    "--config.boot.guidance_range=(2.0, 8.0)",
    "--config.teacher.thresholding=None",
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["None", "(2.0,", "8.0)", "None"]
  # A key that is not optional (an int with a value) is refused in one
  # line, not left to fail later.
  proc = run("--config.train.batch_size=None")
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert proc.returncode != 0
  assert lines == [
    "error: --config.train.batch_size=None: train.batch_size is not "
    "optional, it needs a value"
  ], proc.stderr
  proc = run("--config.boot.nope=None")
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert proc.returncode != 0
  assert lines == [
    "error: unknown config key 'boot.nope' in --config.boot.nope=None"
  ], proc.stderr
