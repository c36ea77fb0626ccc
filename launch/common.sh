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
