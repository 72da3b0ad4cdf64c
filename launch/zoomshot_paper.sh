#!/usr/bin/env bash
# Reproduces the Zoom-shot paper's grid on a Cloud TPU slice, then tabulates it.
#
#   launch/zoomshot_paper.sh TPU_NAME ZONE ACCELERATOR_TYPE GCS_ROOT [--config.FIELD=VALUE ...]
#   launch/zoomshot_paper.sh zs-pod us-central2-b v4-32 gs://my-bucket/zoomshot
#   CLIPS=b32,b16,l14 VISION=dinov2_b14,resnet50 launch/zoomshot_paper.sh zs-pod ...
#
# For every CLIP x vision encoder: Zoom-shot with 20% of ImageNet train for one
# epoch (20pct) and 1% for 20 epochs (1pct_20ep), and Text-to-Concept with its
# reference recipe, one run after the other on the slice (launch/tpu_pod.sh),
# each in GCS_ROOT/<run>. launch/zoomshot_grid.py then collects every
# results.json into GCS_ROOT/results.md (top-1 % per dataset, the CLIP
# reference once per CLIP, a row with a note for a run that failed).
# Finished runs are skipped, so running the script again resumes the grid;
# re-collect alone with: python launch/zoomshot_grid.py --root=GCS_ROOT --collect_only
#
# Environment (defaults in brackets):
#   CLIPS     CLIP words: b32, b16, l14 [b32]
#   VISION    vision encoder words of configs/zoomshot.py
#             [dinov2_b14,deit_b16,vit_b16,beit_b16,resnet50,regnet_y4]
#   DATA_DIR  tfds data_dir with imagenet2012 and the evaluation sets prepared
#             [GCS_ROOT/tensorflow_datasets]
#   T2C_SOLVERS  Text-to-Concept solvers: reference, closed_form [reference].
#             The reference recipe's batch of 100 must split over the slice's
#             devices (v4-8: 4, yes; v4-32: 16, no, the run stops with an error);
#             on such slices use closed_form, the same objective solved exactly.
#
# Needs here: gcloud (authenticated, default project) and this checkout installed
# (pip install -e .). tpu_pod.sh ships the *committed* tree (git archive HEAD).
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,29p' "$0" >&2
  exit 2
fi
tpu=$1 zone=$2 accel=$3 root=${4%/}
shift 4
cd "$(dirname "$0")/.."

exec python launch/zoomshot_grid.py --root="$root" \
  --tpu="$tpu" --zone="$zone" --accelerator="$accel" \
  --clips="${CLIPS:-b32}" \
  --vision="${VISION:-dinov2_b14,deit_b16,vit_b16,beit_b16,resnet50,regnet_y4}" \
  --regimes=20pct,1pct_20ep --methods=zoomshot,text_to_concept --t2c_solvers="${T2C_SOLVERS:-reference}" \
  -- --config.data_dir="${DATA_DIR:-$root/tensorflow_datasets}" "$@"
