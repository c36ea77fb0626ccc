#!/usr/bin/env bash
# Runs a multi-process BOOT job on this machine: P CPU processes with D fake
# devices each, joined through a coordinator on localhost (collectives over
# gloo). This is how the tests prove multi-host behaviour without a pod.
#
#   launch/local.sh --processes 2 --devices-per-process 4 -- \
#     --config configs/gmm.py --workdir /tmp/gmm_mp [--config.a.b=v ...]
#
# Every process's output is prefixed with its index. When one process fails
# the others are stopped, and the script exits with the first failure's
# status. --dry-run prints the exact commands instead of running them.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/local.sh [--processes P] [--devices-per-process D]
                       [--port N] [--module M] [--dry-run] -- <args>
  --processes P            processes to start (default 2)
  --devices-per-process D  fake CPU devices in each process (default 4)
  --port N                 coordinator port on localhost (default 12355)
  --module M               python module to run (default boot_jax.train)
  --dry-run                print the commands, run nothing
  <args>                   passed to every process (e.g. --config, --workdir)
USAGE
}

processes=2
devices=4
port=12355
module=boot_jax.train
dry_run=0
grace=90
python=${PYTHON:-python3}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
after_dashes="arguments for the job"

while (($#)); do
  case "$1" in
    --processes) need_value "$@"; processes=$2; shift 2 ;;
    --devices-per-process) need_value "$@"; devices=$2; shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --module) need_value "$@"; module=$2; shift 2 ;;
    --) shift; break ;;
    *) shared_option "$@"; shift "$taken" ;;
  esac
done

check_int --processes "$processes"
check_int --devices-per-process "$devices"
check_int --port "$port" 65535
if [[ -z "$module" ]]; then
  die "--module needs a value"
fi

command_for() {
  local id=$1
  shift
  cmd=(env JAX_PLATFORMS=cpu "JAX_NUM_CPU_DEVICES=$devices" PYTHONUNBUFFERED=1
    "$python" -m "$module" "--coordinator=localhost:$port"
    "--num_processes=$processes" "--process_id=$id" "$@")
}

if ((dry_run)); then
  for ((i = 0; i < processes; i++)); do
    command_for "$i" "$@"
    printf '%q ' "${cmd[@]}"
    echo
  done
  exit 0
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "$1" "$pid" 2>/dev/null || true
  done
}
trap 'stop_all -TERM; wait; exit 143' TERM
trap 'stop_all -INT; wait; exit 130' INT

for ((i = 0; i < processes; i++)); do
  command_for "$i" "$@"
  exec {out}> >(sed -u "s/^/[process $i] /")
  "${cmd[@]}" >&"$out" 2>&1 &
  pids+=("$!")
  exec {out}>&-
done

status=0
declare -A index_of
for ((i = 0; i < processes; i++)); do
  index_of[${pids[$i]}]=$i
done
running=("${pids[@]}")
# Poll rather than `wait -n`: bash may reap two children at once, and
# `wait PID` still returns the status of one already reaped.
while ((${#running[@]})); do
  left=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      left+=("$pid")
      continue
    fi
    set +e
    wait "$pid"
    rc=$?
    set -e
    if ((rc != 0)); then
      echo "local.sh: process ${index_of[$pid]} exited with status $rc" >&2
      if ((status == 0)); then
        status=$rc
        # The others notice the lost peer themselves (JAX's heartbeat) and
        # exit with their own error; any still running after the grace
        # period are killed.
        echo "local.sh: waiting up to ${grace}s for the other processes" >&2
        (sleep "$grace" && stop_all -KILL) >/dev/null 2>&1 &
        killer=$!
      fi
    fi
  done
  running=("${left[@]}")
  if ((${#running[@]})); then
    sleep 0.5
  fi
done
if [[ -n "${killer:-}" ]]; then
  kill "$killer" 2>/dev/null || true
fi
exit "$status"
