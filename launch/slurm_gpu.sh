#!/usr/bin/env bash
# Submits a multi-node GPU BOOT job to SLURM: one process per node holding
# all of that node's GPUs; JAX reads the coordinator, the process count and
# the process id from SLURM's environment (train --distributed).
#
#   launch/slurm_gpu.sh --nodes 4 --gpus-per-node 8 --partition gpu \
#     -- --config configs/digits.py --workdir /shared/boot_digits
#
# The work directory must be storage every node sees: a shared filesystem,
# or a Cloud Storage URL (--workdir gs://bucket/run; install the 'gcs'
# extra, and give the nodes credentials, e.g. GOOGLE_APPLICATION_CREDENTIALS
# in the job's environment). docs/scaling.md says which to choose. The job's
# output goes to slurm-<jobid>.out. --dry-run prints the batch script and
# the sbatch command instead of submitting.
#
# The job first installs this checkout (pip install -e, once, on one node:
# the nodes share the checkout and the interpreter's environment) with the
# pip extras the run needs: cuda, gcs when the work directory or a path of
# the config is gs://, and what the config's teacher needs (sd, if), read
# from the train arguments' --config before anything is submitted;
# --extras LIST sets them (it must hold those).
#
# Every value written into the batch script is validated (--nodes,
# --gpus-per-node, --time) or quoted with printf %q (--python, the train
# arguments). --partition and --account go to sbatch as arguments rather
# than #SBATCH lines: a directive is one line of sbatch's own syntax, which
# cannot hold every value (a newline ends it).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/slurm_gpu.sh --nodes N --gpus-per-node G [--partition P]
                           [--time T] [--account A] [--python PY]
                           [--extras LIST] [--dry-run] -- <train args>
  --time T       walltime: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]] or UNLIMITED
                 (default 24:00:00)
  --python PY    the interpreter on the nodes, one word (default python3)
  --extras LIST  pip extras of boot_jax the job installs, comma separated
                 (default: what the run needs: cuda, gcs for gs:// paths,
                 sd or if for the config's teacher, e.g. cuda,sd); refused
                 unless it holds those and setup.py declares each
  --dry-run      print the batch script and the sbatch command, submit
                 nothing
USAGE
}

nodes=""
gpus=""
partition=""
time_limit=24:00:00
account=""
python=python3
extras=""
dry_run=0

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
after_dashes="train arguments"

while (($#)); do
  case "$1" in
    --nodes) need_value "$@"; nodes=$2; shift 2 ;;
    --gpus-per-node) need_value "$@"; gpus=$2; shift 2 ;;
    --partition) need_value "$@"; partition=$2; shift 2 ;;
    --time) need_value "$@"; time_limit=$2; shift 2 ;;
    --account) need_value "$@"; account=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --) shift; break ;;
    *) shared_option "$@"; shift "$taken" ;;
  esac
done

check_int --nodes "$nodes"
check_int --gpus-per-node "$gpus"
# SLURM's formats: minutes, minutes:seconds, hours:minutes:seconds,
# days-hours, days-hours:minutes, days-hours:minutes:seconds, or no limit.
if ! [[ "$time_limit" =~ ^([0-9]{1,9}-)?[0-9]{1,9}(:[0-9]{1,2}){0,2}$ ||
  "$time_limit" =~ ^(UNLIMITED|INFINITE|unlimited|infinite)$ ]]; then
  die "--time takes MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or" \
    "UNLIMITED, got $(printf '%q' "$time_limit")"
fi
if [[ -z "$python" ]]; then
  die "--python needs a value"
fi
if (($# == 0)); then
  die "give the train arguments after -- (--config, --workdir)"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
# Reads the config (and refuses a bad --extras) before anything is
# submitted.
extras=$(resolve_extras cuda "$extras" "$repo" "$@") || exit
printf -v repo_q '%q' "$repo"
printf -v package_q '%q' "${repo}[$extras]"
printf -v python_q '%q' "$python"
printf -v train_args '%q ' "$@"
script=$(cat <<SCRIPT
#!/usr/bin/env bash
#SBATCH --job-name=boot_jax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus
#SBATCH --time=$time_limit
set -euo pipefail
$(describe_workdir "$(workdir_of "$@")")
cd $repo_q
srun --nodes=1 --ntasks=1 $python_q -m pip install --quiet -e $package_q
srun --kill-on-bad-exit=1 $python_q -m boot_jax.train --distributed $train_args
SCRIPT
)
submit=(sbatch)
if [[ -n "$partition" ]]; then
  submit+=("--partition=$partition")
fi
if [[ -n "$account" ]]; then
  submit+=("--account=$account")
fi

if ((dry_run)); then
  echo "$script"
  printf -v submit_q '%q ' "${submit[@]}"
  echo "# (this script is what would be piped to: ${submit_q% })"
  exit 0
fi
"${submit[@]}" <<< "$script"
