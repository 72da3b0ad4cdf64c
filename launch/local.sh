#!/usr/bin/env bash
# Runs the binary on this machine (CPU, or one GPU with jax[cuda12] installed).
#
#   launch/local.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   launch/local.sh configs/zeroshot_eval.py:b32,cifar /tmp/zs_cifar --config.batch_size=128
#
# Debug a sharded run on a laptop with fake devices:
#   XLA_FLAGS=--xla_force_host_platform_device_count=8 launch/local.sh ...
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
cd "$(dirname "$0")/.."
exec python -m zoomshot_jax.main --config="$config" --workdir="$workdir" "$@"
