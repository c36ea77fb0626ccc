#!/usr/bin/env bash
# Helpers shared by the launch scripts (sourced, not run).

# Prints one line, "error: MESSAGE", on stderr and exits 2. Callers quote
# user values with printf %q so that the message stays on one line.
die() {
  echo "error: $*" >&2
  exit 2
}

# Fails unless the option in $1 is followed by a value: need_value "$@".
need_value() {
  if (($# < 2)); then
    die "$1 needs a value"
  fi
}

# The options every launcher shares, for the last branch of its option
# loop (`*) shared_option "$@"; shift "$taken" ;;`): --dry-run (sets
# dry_run=1), -h/--help (calls the launcher's usage), --extras LIST where
# the launcher installs packages (it sets `extras` before the loop), and
# the error for anything else, naming what goes after -- ($after_dashes).
# Sets `taken` to the number of arguments used.
# shellcheck disable=SC2034,SC2154  # dry_run, extras, taken: the caller's
shared_option() {
  taken=1
  case "$1" in
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --extras)
      [[ -v extras ]] || die "unknown option --extras"
      need_value "$@"
      [[ -n "$2" ]] || die "--extras needs a value"
      extras=$2
      taken=2 ;;
    *) die "unknown option $(printf '%q' "$1") ($after_dashes go after --)" ;;
  esac
}

# Prints the value of the train argument --workdir (as "--workdir X" or
# "--workdir=X") among "$@", or nothing.
workdir_of() {
  while (($#)); do
    case "$1" in
      --workdir) echo "${2:-}"; return ;;
      --workdir=*) echo "${1#--workdir=}"; return ;;
    esac
    shift
  done
}

# Explains where the work directory of a multi-host run lives: one comment
# line on stdout (for --dry-run output).
describe_workdir() {
  local w=$1
  if [[ -z "$w" ]]; then
    echo "# work directory: none given (train will refuse to start)"
  elif [[ "$w" == gs://* ]]; then
    echo "# work directory: $(printf '%q' "$w") (Cloud Storage: every" \
      "host reads and writes it; outlives the VMs)"
  else
    echo "# work directory: $(printf '%q' "$w") (a local path: it must be" \
      "a mount every host sees; gs://bucket/run needs none)"
  fi
}

# Fails unless $2, the value of option $1, is an integer from 1 to $3
# (any positive integer up to 9 digits when $3 is not given).
check_int() {
  local range="a positive integer"
  if [[ -n "${3:-}" ]]; then
    range="an integer from 1 to $3"
  fi
  if ! [[ "$2" =~ ^[1-9][0-9]{0,8}$ ]] || (($2 > ${3:-999999999})); then
    die "$1 takes $range, got $(printf '%q' "$2")"
  fi
}

# Prints the pip extras of boot_jax to install for a run, comma separated
# (e.g. "tpu,gcs,sd"): resolve_extras PLATFORM REQUESTED REPO TRAIN_ARGS...
# PLATFORM is the accelerator's extra (tpu, cuda). The run needs it, 'gcs'
# when the work directory or a path of the config is a gs:// URL, and what
# the config's teacher needs (boot_jax.teachers.required_extras). REQUESTED
# is the user's --extras, or '' when not given: the needed extras then.
# The config is the train arguments' --config (with its ':arg' and its
# --config.* overrides), loaded as `python -m boot_jax.train` loads it,
# from REPO (where train runs), with REPO's boot_jax. Refuses in one line,
# exiting 2, a REQUESTED that lacks a needed extra or names one setup.py
# does not declare, and a config that does not load. Runs nothing else
# and writes no file.
resolve_extras() {
  local platform=$1 requested=$2 repo=$3 python=${PYTHON:-python3}
  shift 3
  if ! command -v "$python" >/dev/null; then
    die "$(printf '%q' "$python") not found: the launch scripts read the" \
      "config with it (set PYTHON to an interpreter with boot_jax's" \
      "dependencies)"
  fi
  (cd "$repo" && PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" - "$platform" "$requested" "$@" <<'PY'
import ast
import os
import sys

# Library warnings on stderr go nowhere; the one error line goes to `err`.
err = os.dup(2)
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


def fail(message):
  line = " ".join(str(message).split())
  os.write(err, f"error: {line}\n".encode("utf-8", "replace"))
  os._exit(2)


def last_line(e):
  lines = [x.strip() for x in str(e).splitlines() if x.strip()]
  return lines[-1] if lines else type(e).__name__


sys.excepthook = lambda kind, e, tb: fail(
  f"cannot tell which extras the run needs: {last_line(e)}"
)


def strings(value):
  if isinstance(value, str):
    yield value
  elif hasattr(value, "items"):
    for v in value.values():
      yield from strings(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from strings(v)


platform, requested, *args = sys.argv[1:]
try:
  tree = ast.parse(open("setup.py", encoding="utf-8").read())
  [declared] = [
    {ast.literal_eval(k) for k in kw.value.keys}
    for node in ast.walk(tree)
    if isinstance(node, ast.Call)
    for kw in node.keywords
    if kw.arg == "extras_require"
  ]
except Exception as e:  # noqa: BLE001
  fail(f"cannot read the extras that setup.py declares: {last_line(e)}")

try:
  from absl import flags
  from ml_collections import config_flags
except ImportError as e:
  fail(f"reading the config needs boot_jax's dependencies here: {e}")
fv = flags.FlagValues()
argv = ["train", *args]
config_flag = config_flags.DEFINE_config_file(
  "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
)
workdir_flag = flags.DEFINE_string("workdir", None, "", flag_values=fv)
try:
  fv(argv, known_only=True)
  config = config_flag.value
  if config is not None:
    config.keys()
except (AttributeError, KeyError) as e:
  key = last_line(e.args[0] if e.args else e).strip("\"'")
  overrides = [a.split("=", 1)[0] for a in args if a.startswith("--config.")]
  fail(f"unknown config key {key!r} in {' '.join(overrides)}")
except Exception as e:  # noqa: BLE001
  fail(f"cannot load the config: {last_line(e)}")

why = {platform: "the accelerator"}
urls = list(strings(config)) if config is not None else []
if any(
  s.startswith(("gs://", "gcs://")) for s in [workdir_flag.value or "", *urls]
):
  why["gcs"] = "gs:// paths"
if config is not None:
  name = fv["config"].config_filename
  teacher = config.get("teacher")
  if teacher is None:
    fail(f"{name!r} has no teacher section: not a boot_jax.train config")
  try:
    from boot_jax.teachers import required_extras

    for extra in required_extras(teacher):
      why.setdefault(extra, f"the {teacher.name!r} teacher of {name!r}")
  except Exception as e:  # noqa: BLE001
    fail(f"cannot tell what the config {name!r} needs: {last_line(e)}")

if not requested:
  chosen = list(why)
else:
  chosen = []
  for extra in requested.split(","):
    extra = extra.strip()
    if extra not in declared:
      fail(
        f"--extras {requested!r}: {extra!r} is not an extra of boot_jax "
        f"(setup.py declares {', '.join(sorted(declared))})"
      )
    if extra not in chosen:
      chosen.append(extra)
missing = [extra for extra in why if extra not in chosen]
if missing:
  fail(
    f"--extras {requested!r} lacks "
    + ", ".join(f"{extra} (for {why[extra]})" for extra in missing)
  )
unknown = [extra for extra in chosen if extra not in declared]
if unknown:
  fail(f"setup.py declares no extra {', '.join(unknown)}")
print(",".join(chosen))
PY
  ) || exit
}
