#!/usr/bin/env bash
# Runs the binary on every worker of a Cloud TPU VM slice (e.g. a v4-32 pod).
#
#   launch/tpu_pod.sh TPU_NAME ZONE ACCELERATOR_TYPE CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   launch/tpu_pod.sh zs-pod us-central2-b v4-32 configs/zeroshot_eval.py:l14,all \
#       gs://my-bucket/zs/l14_all --config.data_dir=gs://my-bucket/tensorflow_datasets
#
# Creates the TPU VM if it does not exist (runtime tpu-ubuntu2204-base), copies
# this checkout to every worker, installs it with jax[tpu], and starts the
# binary on all workers at once; `jax.distributed.initialize()` finds the
# peers on a multi-worker slice by itself. Keep data (tfds data_dir) and the
# workdir on GCS so that every worker sees them. Needs gcloud, authenticated,
# with a default project.
set -euo pipefail
if [[ $# -lt 5 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
tpu=$1 zone=$2 accel=$3 config=$4 workdir=$5
shift 5
cd "$(dirname "$0")/.."

if ! gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" \
    --accelerator-type="$accel" --version=tpu-ubuntu2204-base
fi

# Ship the checkout as it is (tracked files only) to every worker.
archive=$(mktemp --suffix=.tar.gz)
git archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$tpu":~/zoomshot_jax.tar.gz --zone="$zone" --worker=all
rm -f "$archive"

overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  rm -rf ~/zoomshot_jax && mkdir -p ~/zoomshot_jax && tar -xzf ~/zoomshot_jax.tar.gz -C ~/zoomshot_jax
  cd ~/zoomshot_jax
  python3 -m venv ~/zs_venv && . ~/zs_venv/bin/activate
  pip install -q -e . 'jax[tpu]<0.11'
  python -m zoomshot_jax.main --config='$config' --workdir='$workdir' $overrides
"
