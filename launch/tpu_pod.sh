#!/usr/bin/env bash
# Runs a BOOT job on a Cloud TPU VM slice: create the slice, install this
# checkout on every worker, run the same train command on all workers (gcloud
# streams each worker's output back), then delete the slice.
#
#   launch/tpu_pod.sh --name boot-v4 --zone us-central2-b \
#     --accelerator v4-32 -- --config configs/digits.py \
#     --workdir gs://my-bucket/boot_digits
#
# JAX finds the coordinator from the TPU VM metadata (train --distributed).
# Every worker writes its checkpoint shards into the work directory, so it
# must be storage every worker sees: a Cloud Storage URL (gs://bucket/run,
# recommended: nothing to mount, and it outlives a preempted Spot slice;
# the VMs' service account needs write access to the bucket) or a Filestore
# or gcsfuse mount. docs/scaling.md says which to choose.
#
# The workers install boot_jax with the pip extras the run needs: tpu, gcs
# when the work directory or a path of the config is gs://, and what the
# config's teacher needs (sd, if), read from the train arguments' --config
# before anything is created; --extras LIST sets them (it must hold those).
# The checkout is packed (git archive HEAD: committed files only) into a
# private temporary directory, removed on exit.
# --dry-run prints the exact commands instead of running them.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE
                         [--version V] [--project P] [--spot] [--keep]
                         [--extras LIST] [--dry-run] -- <train args>
  --name NAME         TPU VM name to create (and delete at the end)
  --zone ZONE         e.g. us-central2-b
  --accelerator TYPE  e.g. v4-8, v4-32, v5litepod-16
  --version V         TPU VM software version (default tpu-ubuntu2204-base)
  --project P         Google Cloud project (default: gcloud's)
  --spot              create a Spot (preemptible) slice
  --keep              keep the slice after the run
  --extras LIST       pip extras of boot_jax to install on the workers,
                      comma separated (default: what the run needs: tpu,
                      gcs for gs:// paths, sd or if for the config's
                      teacher, e.g. tpu,gcs,sd); refused unless it holds
                      those and setup.py declares each
  --dry-run           print the commands, run nothing
USAGE
}

name=""
zone=""
accelerator=""
version=tpu-ubuntu2204-base
project=""
spot=0
keep=0
extras=""
dry_run=0

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
after_dashes="train arguments"

while (($#)); do
  case "$1" in
    --name) need_value "$@"; name=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --accelerator) need_value "$@"; accelerator=$2; shift 2 ;;
    --version) need_value "$@"; version=$2; shift 2 ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --keep) keep=1; shift ;;
    --) shift; break ;;
    *) shared_option "$@"; shift "$taken" ;;
  esac
done

if [[ -z "$name" || -z "$zone" || -z "$accelerator" ]]; then
  die "--name, --zone and --accelerator are required"
fi
# The name is gcloud's positional argument (a leading '-' would make it an
# option).
if ! [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
  die "--name takes letters, digits, '-', '_' and '.', got" \
    "$(printf '%q' "$name")"
fi
if (($# == 0)); then
  die "give the train arguments after -- (--config, --workdir)"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
# Reads the config (and refuses a bad --extras) before anything is created.
extras=$(resolve_extras tpu "$extras" "$repo" "$@") || exit

# The checkout is packed into a private directory (mktemp -d), removed on
# exit; --dry-run prints the same steps, the directory as "$tmp".
if ((dry_run)); then
  # shellcheck disable=SC2016 # printed as is, for the shell that runs it
  tarball='"$tmp"/boot_jax.tar.gz'
else
  created=0
  cleanup() {
    rm -rf -- "$tmp"
    if ((created && !keep)); then
      "${delete[@]}" || echo "warning: could not delete $name" >&2
    fi
  }
  tmp=$(mktemp -d)
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  tarball=$tmp/boot_jax.tar.gz
fi

# --flag=VALUE keeps each value one argument to gcloud, even one that starts
# with '-'.
common=("--zone=$zone")
if [[ -n "$project" ]]; then
  common+=("--project=$project")
fi
create=(gcloud compute tpus tpu-vm create "$name" "${common[@]}"
  "--accelerator-type=$accelerator" "--version=$version")
if ((spot)); then
  create+=(--spot)
fi
pack=(git -C "$repo" archive --format=tar.gz -o "$tarball" HEAD)
copy=(gcloud compute tpus tpu-vm scp "$tarball" "$name:boot_jax.tar.gz"
  "${common[@]}" --worker=all)
# The remote command is a string that the worker's login shell (bash on TPU
# VMs) parses: each train argument goes in quoted with printf %q. The
# extras are names that setup.py declares (resolve_extras checks).
printf -v train_args '%q ' "$@"
install="mkdir -p boot_jax && tar -xzf boot_jax.tar.gz -C boot_jax"
install+=" && python3 -m pip install --quiet -e './boot_jax[$extras]'"
setup=(gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all
  --command "$install")
run=(gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all
  --command "cd boot_jax && python3 -m boot_jax.train --distributed \
${train_args}")
delete=(gcloud compute tpus tpu-vm delete "$name" "${common[@]}" --quiet)

if ((dry_run)); then
  describe_workdir "$(workdir_of "$@")"
  echo "# each worker installs: $install"
  cat <<'TMP'
tmp=$(mktemp -d) && trap 'rm -rf -- "$tmp"' EXIT
TMP
  steps=(create pack copy setup run)
  if ((!keep)); then
    steps+=(delete)
  fi
  for step in "${steps[@]}"; do
    declare -n c=$step
    for arg in "${c[@]}"; do
      if [[ "$arg" == "$tarball" ]]; then
        printf '%s ' "$arg"
      else
        printf '%q ' "$arg"
      fi
    done
    echo
  done
  exit 0
fi

"${create[@]}"
created=1
"${pack[@]}"
"${copy[@]}"
"${setup[@]}"
"${run[@]}"
