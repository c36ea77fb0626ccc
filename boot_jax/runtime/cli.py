"""Shared command-line plumbing: flag parsing with one-line errors."""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections.config_dict import FieldReference

from boot_jax.config import defaults


def fail(message: str, code: int = 2):
  """Exits with `error: <message>` on one line of stderr.

  Exits with os._exit: callers have already waited for (or never started)
  checkpoint writes, and after a failed orbax restore or save its
  background threads otherwise print tracebacks from a closed event loop
  at shutdown. The line goes out in one write that starts on a fresh line,
  so output other threads are still printing cannot split it; after it,
  stderr is closed to them.
  """
  message = " ".join(str(message).split())
  sys.stdout.flush()
  sys.stderr.flush()
  # fd 2 goes to /dev/null before anything else: a thread still printing
  # (tensorstore's callbacks) can no longer reach the terminal, even
  # between draining the filter and writing the error.
  devnull = os.open(os.devnull, os.O_WRONLY)
  real = _stop_stderr_filter(replacement=devnull, drop_partial=True)
  os.write(real, f"\nerror: {message}\n".encode("utf-8", "replace"))
  os._exit(code)


# The tensorstore callbacks of a failed asynchronous checkpoint write run
# after orbax closed their event loop; each prints this traceback straight
# to the stderr file descriptor (dozens for one full disk). They carry no
# information beyond the failure the CLI reports in one line.
_NOISE_LAST_LINE = "RuntimeError: Event loop is closed"
_filter = {}


def _forward(read_fd: int, real_fd: int) -> None:
  """Copies lines to `real_fd`, dropping whole noise tracebacks."""
  block: list[bytes] = []
  with os.fdopen(read_fd, "rb", buffering=0) as pipe:
    for line in iter(pipe.readline, b""):
      if block or line.startswith(b"Traceback (most recent call last):"):
        block.append(line)
        if line[:1] in (b" ", b"\t") or line.startswith(b"Traceback"):
          continue
        if line.decode("utf-8", "replace").strip() != _NOISE_LAST_LINE:
          os.write(real_fd, b"".join(block))
        block = []
        continue
      os.write(real_fd, line)
  if block and not _filter.get("drop_partial"):
    os.write(real_fd, b"".join(block))


def _start_stderr_filter() -> None:
  """Routes fd 2 through `_forward` (idempotent)."""
  if _filter:
    return
  import atexit  # noqa: PLC0415
  import threading  # noqa: PLC0415

  sys.stderr.flush()
  real = os.dup(2)
  read_fd, write_fd = os.pipe()
  os.dup2(write_fd, 2)
  os.close(write_fd)
  thread = threading.Thread(
    target=_forward, args=(read_fd, real), daemon=True, name="stderr-filter"
  )
  thread.start()
  _filter.update(real=real, thread=thread)
  atexit.register(_stop_stderr_filter)


def _stop_stderr_filter(
  replacement: int | None = None, drop_partial: bool = False
) -> int:
  """Drains the filter; fd 2 becomes `replacement` (default: the real
  stderr again). Returns an fd of the real stderr. `drop_partial` drops a
  traceback cut off by the drain (a thread stopped mid-print)."""
  if not _filter or "stopped" in _filter:
    real = os.dup(2)
    if replacement is not None:
      os.dup2(replacement, 2)
    return real
  _filter["stopped"] = True
  _filter["drop_partial"] = drop_partial
  try:
    sys.stderr.flush()
  except (OSError, ValueError):
    pass
  # Closes the pipe's last writer: the filter reads to EOF and ends.
  os.dup2(_filter["real"] if replacement is None else replacement, 2)
  _filter["thread"].join(timeout=5)
  return _filter["real"]


def check_args(argv, f, *required: str) -> None:
  """One-line failures for stray positional arguments and for missing
  required flags (`required`: keys of the flag dict `f`)."""
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  missing = [name for name in required if not f[name].value]
  if missing:
    names = " and ".join(f"--{name}" for name in required)
    fail(f"{names} {'is' if len(required) == 1 else 'are'} required")


def _quiet_orbax(record) -> bool:
  return "orbax" not in (record.pathname or "")


_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _unknown_key(args, error) -> str:
  """'unknown config key ...' naming the one bad `--config.` override."""
  overrides = [a.split("=", 1)[0] for a in args if a.startswith("--config.")]
  text = str(error.args[0]) if error.args else str(error)
  names = re.findall(r"'([^'\\]+)'", text.replace("\\", ""))
  hint = re.search(r'Did you mean "([^"]+)"', text)
  for flag in overrides:
    parts = flag[len("--config.") :].split(".")
    if names and names[0] in parts:
      msg = f"unknown config key {names[0]!r} in {flag}"
      if hint:
        msg += f" (did you mean {hint.group(1)!r}?)"
      return msg
  return f"unknown config key in {' '.join(overrides)}: {_last_line(text)}"


def _last_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else str(text)


def _program_help() -> str:
  """Every flag the program defines, wherever it was declared (the main
  module, or the shared ones here): absl's --help shows only the main
  module's."""
  main = flags.FLAGS.main_module_help()
  shared = [
    flags.FLAGS.module_help(name)
    for name in sorted(flags.FLAGS.flags_by_module_dict())
    if name.startswith("boot_jax.") and name != sys.argv[0]
  ]
  return "\n\n".join([main, *(h for h in shared if h.strip())])


# `--config.KEY=None` (or null): set KEY to None. ml_collections
# parses an override by the type of the key's value, so a float key cannot
# be unset from the command line by itself; these overrides are taken out
# before absl parses and applied by `config_value`.
_NONE_WORDS = ("None", "null")
_none_keys: list[str] = []

# `--config.teacher.schedule=NAME` (or `diffusion.schedule`, a teacher
# training config's): a whole schedule section by name
# (`defaults.named_schedule`), applied after the other overrides, so
# `--config.teacher.schedule.shift=3` beside it is kept.
_SCHEDULE_KEYS = ("teacher.schedule", "diffusion.schedule")
_schedule_names: list[tuple[str, str]] = []


def _split_none_overrides(argv):
  kept = []
  for arg in argv:
    name, eq, value = arg.partition("=")
    key = name[len("--config.") :]
    if eq and name.startswith("--config.") and value in _NONE_WORDS:
      _none_keys.append(key)
    elif eq and key in _SCHEDULE_KEYS and re.fullmatch(r"\w+", value):
      _schedule_names.append((key, value))
    else:
      kept.append(arg)
  return kept


def _set_schedule(config, key: str, name: str) -> None:
  *parents, last = key.split(".")
  node = config
  for part in parents + [last]:
    node = node.get(part) if hasattr(node, "get") else None
  if not hasattr(node, "keys") or "type" not in node.keys():
    fail(
      f"--config.{key}={name}: this config has no schedule section {key} "
      "(network teachers read theirs from the teacher's folder)"
    )
  try:
    defaults.named_schedule(node, name)
  except ValueError as e:
    fail(f"--config.{key}={name}: {e}")


def _set_none(config, key: str) -> None:
  *parents, last = key.split(".")
  node = config
  for part in parents:
    node = node.get(part) if hasattr(node, "get") else None
  if not hasattr(node, "keys") or last not in node.keys():
    fail(f"unknown config key {key!r} in --config.{key}=None")
  # Optional keys are declared as placeholders (a typed FieldReference) or
  # hold None; any other key needs a value.
  field = getattr(node, "_fields", {}).get(last)
  if node[last] is not None and not isinstance(field, FieldReference):
    fail(f"--config.{key}=None: {key} is not optional, it needs a value")
  node[last] = None


def parse_flags(argv):
  """absl flag parsing that turns every parse error into one line.

  Library INFO and WARNING logs (orbax logs every checkpoint step and
  warns about read-only directories) are hidden unless
  --verbosity is given.
  """
  if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
    logging.set_verbosity(logging.ERROR)
    # Orbax's background threads log each failed write with a traceback
    # (hundreds of lines for one full disk); the caller reports the
    # failure in one line instead.
    std_logging.getLogger("absl").addFilter(_quiet_orbax)
    _start_stderr_filter()
  asked = [a for a in argv[1:] if a in _HELP]
  if asked:
    # absl's own help flag exits with status 1; asking for help succeeds.
    main = sys.modules.get("__main__")
    doc = (getattr(main, "__doc__", None) or "").strip()
    if doc:
      print(doc + "\n")
    if asked[0] == "--helpfull":
      print(flags.FLAGS.get_help())
    else:
      print(_program_help())
    sys.exit(0)
  kept = _split_none_overrides(argv)
  if len(kept) < len(argv) and sys.argv[1:] == argv[1:]:
    # ml_collections reads the overrides from sys.argv itself.
    sys.argv[:] = kept
  try:
    return flags.FLAGS(kept)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key the config
    # does not have; name that override only.
    fail(_unknown_key(argv[1:], e))
  except Exception as e:  # noqa: BLE001 - every parse error gets one line
    fail(_last_line(e))


def config_value(config_flag):
  """The parsed config (with the `--config.KEY=None` overrides applied),
  or a one-line error if its file failed to load."""
  try:
    config = config_flag.value
    if config is not None:
      config.keys()  # a config that failed to load raises on first use
  except Exception as e:  # noqa: BLE001
    fail(f"cannot load the config: {_last_line(e)}")
  if config is None:
    fail("--config is required")
  for key in _none_keys:
    _set_none(config, key)
  for key, name in _schedule_names:
    _set_schedule(config, key, name)
  return config


def printer(line: str) -> None:
  """Progress output: one flushed line on stdout."""
  print(line, flush=True)


def define_inference_flags(dtypes, mesh: bool = True) -> dict:
  """`--dtype` (one of `dtypes`) and (with `mesh`) `--mesh`, shared by the
  inference programs (`sample`, `evaluate`, `export`)."""

  out = {}
  if mesh:
    out["mesh"] = flags.DEFINE_string(
      "mesh",
      None,
      "Device layout, e.g. data=2,fsdp=4 (default: the batch over every "
      "local device).",
    )
  return dict(
    out,
    dtype=flags.DEFINE_enum(
      "dtype",
      "float32",
      sorted(dtypes),
      "Computation dtype of the networks (float32: the teacher is a "
      "reference).",
    ),
  )


def status_of(body, errors=(ValueError, OSError)) -> int:
  """Runs `body()` for a program whose `main` returns its exit status
  (callable in process): 0; an error of `errors` is one `error:` line on
  stderr and 1; Ctrl-C is one line and 130."""
  try:
    body()
  except KeyboardInterrupt:
    message, code = "interrupted (Ctrl-C); nothing was written", 130
  except errors as e:
    message, code = " ".join(str(e).split())[:300], 1
  else:
    return 0
  print(f"error: {message}", file=sys.stderr)
  return code


def run(define_flags, main) -> None:
  """Runs a program: defines its flags, then calls `main(argv, flags)`
  under absl, every flag error one line (`parse_flags`)."""
  defined = define_flags()
  app.run(lambda argv: main(argv, defined), flags_parser=parse_flags)


@contextlib.contextmanager
def one_line_errors():
  """A program's body: a user error (`ValueError`, which checkpoint, config
  and guard errors are, `OSError`, `FloatingPointError`) leaves as one
  `error:` line with exit status 1; a stop signal's exception (one that
  carries `signum`) with 128 + the signal's number; Ctrl-C that arrives
  before a training loop handles it (while loading or compiling) with 130,
  whatever was saved before kept."""
  try:
    yield
  except KeyboardInterrupt:
    fail("interrupted (Ctrl-C); what was saved before is kept", code=130)
  except (ValueError, OSError, FloatingPointError) as e:
    fail(e, code=1)
  except RuntimeError as e:
    if isinstance(getattr(e, "signum", None), int):
      fail(e, code=128 + e.signum)
    raise
