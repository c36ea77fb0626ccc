"""Shared command-line plumbing: flag parsing with one-line errors."""

from __future__ import annotations

import os
import sys

from absl import flags, logging


def fail(message: str, code: int = 2):
  """Exits with `error: <message>` on one line of stderr.

  Exits with os._exit: callers have already waited for (or never started)
  checkpoint writes, and after a failed orbax restore its background
  threads otherwise print tracebacks from a closed event loop at shutdown.
  The line goes out in one write that starts on a fresh line, so output
  other threads are still printing cannot split it; after it, stderr is
  closed to them.
  """
  message = " ".join(str(message).split())
  sys.stdout.flush()
  sys.stderr.flush()
  os.write(2, f"\nerror: {message}\n".encode("utf-8", "replace"))
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os._exit(code)


def _last_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else str(text)


def parse_flags(argv):
  """absl flag parsing that turns every parse error into one line.

  Library INFO and WARNING logs (orbax logs every checkpoint step and
  warns about read-only directories) are hidden unless
  --verbosity is given.
  """
  if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
    logging.set_verbosity(logging.ERROR)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key the config
    # does not have.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    key = str(e).strip("\"'")
    fail(f"unknown config key {key!r} in {' '.join(overrides)}")
  except Exception as e:  # noqa: BLE001 - every parse error gets one line
    fail(_last_line(e))


def config_value(config_flag):
  """The parsed config, or a one-line error if its file failed to load."""
  try:
    config = config_flag.value
    if config is not None:
      config.keys()  # a config that failed to load raises on first use
  except Exception as e:  # noqa: BLE001
    fail(f"cannot load the config: {_last_line(e)}")
  if config is None:
    fail("--config is required")
  return config


def printer(line: str) -> None:
  """Progress output: one flushed line on stdout."""
  print(line, flush=True)
