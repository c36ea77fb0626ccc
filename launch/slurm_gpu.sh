#!/usr/bin/env bash
# Submits a multi-node GPU BOOT job to SLURM: one process per node holding
# all of that node's GPUs; JAX reads the coordinator, the process count and
# the process id from SLURM's environment (train --distributed).
#
#   launch/slurm_gpu.sh --nodes 4 --gpus-per-node 8 --partition gpu \
#     -- --config configs/digits.py --workdir /shared/boot_digits
#
# The work directory must be on a filesystem every node sees. The job's
# output goes to slurm-<jobid>.out. --dry-run prints the batch script and
# the sbatch command instead of submitting.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/slurm_gpu.sh --nodes N --gpus-per-node G [--partition P]
                           [--time HH:MM:SS] [--account A] [--python PY]
                           [--dry-run] -- <train args>
USAGE
}

nodes=""
gpus=""
partition=""
time_limit=24:00:00
account=""
python=python3
dry_run=0

while (($#)); do
  case "$1" in
    --nodes) nodes=$2; shift 2 ;;
    --gpus-per-node) gpus=$2; shift 2 ;;
    --partition) partition=$2; shift 2 ;;
    --time) time_limit=$2; shift 2 ;;
    --account) account=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (train arguments go after --)" >&2
       exit 2 ;;
  esac
done

for v in "$nodes" "$gpus"; do
  if ! [[ "$v" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --nodes and --gpus-per-node take positive integers" >&2
    exit 2
  fi
done
if (($# == 0)); then
  echo "error: give the train arguments after -- (--config, --workdir)" >&2
  exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
printf -v train_args '%q ' "$@"
script=$(cat <<SCRIPT
#!/usr/bin/env bash
#SBATCH --job-name=boot_jax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus
#SBATCH --time=$time_limit
${partition:+#SBATCH --partition=$partition}
${account:+#SBATCH --account=$account}
set -euo pipefail
cd $(printf '%q' "$repo")
srun --kill-on-bad-exit=1 $python -m boot_jax.train --distributed $train_args
SCRIPT
)

if ((dry_run)); then
  echo "$script"
  echo "# (this script is what would be piped to: sbatch)"
  exit 0
fi
sbatch <<< "$script"
