"""The programs' shared plumbing: every failure leaves as one line."""

import subprocess
import sys

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
