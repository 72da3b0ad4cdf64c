#!/usr/bin/env bash
# Zero-shot feature distillation, the reference's pipeline, on one GPU/TPU host
# (or a pod, through launch/tpu_pod.sh per command), then the markdown table.
#
#   STAGE1_DATA=tfrecord:/data/datacomp/*.tfrecord GENERATE="python my_sd.py" \
#     launch/distill_paper.sh ROOT [--config.FIELD=VALUE ...]
#
# 1. stage 1: the student (STUDENT) on domain-agnostic image-text pairs
#    (STAGE1_DATA, any of ASIF's source kinds), 1 epoch, into ROOT/stage1;
# for each dataset word of DATASETS (pets food cars flowers aircraft dtd):
# 2. prompts: python -m zoomshot_jax.tools.synthetic prompts with
#    ATTRIBUTES/<word>.json (launch/synthetic_attributes/ has an example for
#    pets) and the dataset's class names -> ROOT/<word>/prompts.jsonl;
# 3. images: $GENERATE ROOT/<word>/prompts.jsonl ROOT/<word>/images must
#    write images/<class>/<index>.png (your text-to-image model: none is
#    bundled); without GENERATE the script stops here, prompts written;
# 4. the teacher filter -> ROOT/<word>/filtered (manifest.jsonl inside);
# 5. stage 2: 96 epochs on the filtered images from stage 1's export, then
#    zero-shot on the dataset's test split with its single template;
# 6. ROOT/results.md: student and teacher top-1 per dataset.
# Finished steps are skipped (each writes its output atomically), so running
# the script again resumes.
#
# Environment (defaults in brackets):
#   STUDENT     a preset of configs/distill.py [vit_tiny]
#   DATASETS    dataset words [pets food cars flowers aircraft dtd]
#   TEACHER     the CLIP [laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K]
#   DATA_DIR    tfds data_dir with the evaluation sets prepared [~/tensorflow_datasets]
#   ATTRIBUTES  directory of <word>.json attribute files [launch/synthetic_attributes]
#   AIRCRAFT_TEST  for aircraft (no tfds dataset): FGVC-Aircraft test images, <variant>/<file>
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,31p' "$0" >&2
  exit 2
fi
root=${1%/}
shift
cd "$(dirname "$0")/.."
student=${STUDENT:-vit_tiny}
teacher=${TEACHER:-laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K}
data_dir=${DATA_DIR:-$HOME/tensorflow_datasets}
attributes=${ATTRIBUTES:-launch/synthetic_attributes}
common=(--config.clip="$teacher" --config.data_dir="$data_dir" "$@")

if [[ ! -f "$root/stage1/export/student/student.json" ]]; then
  : "${STAGE1_DATA:?set STAGE1_DATA to the stage-1 image-text pairs (e.g. tfrecord:/data/*.tfrecord)}"
  python -m zoomshot_jax.main --config="configs/distill.py:$student,stage1" \
    --workdir="$root/stage1" --config.data.dataset="$STAGE1_DATA" "${common[@]}"
fi

for word in ${DATASETS:-pets food cars flowers aircraft dtd}; do
  dir="$root/$word"
  mkdir -p "$dir"
  tfds_name=$(python -c "from zoomshot_jax.configs import distill; print(distill.DATASETS['$word'][0])")
  eval_args=()
  if [[ -z "$tfds_name" ]]; then   # FGVC-Aircraft: no tfds dataset; a folder of test images
    : "${AIRCRAFT_TEST:?set AIRCRAFT_TEST to a folder of FGVC-Aircraft test images, <variant>/<file>}"
    eval_args=(--config.evals.zeroshot.datasets="folder:$AIRCRAFT_TEST")
  fi
  if [[ ! -f "$dir/classnames.json" ]]; then
    python -c "import json, os, sys; from zoomshot_jax import evaluation
name, folder = sys.argv[1], sys.argv[2]
names = (evaluation.classnames.load_known(name).classnames if name else
         sorted(d.replace('_', ' ') for d in os.listdir(folder)))
print(json.dumps(list(names)))" "$tfds_name" "${AIRCRAFT_TEST:-}" \
      > "$dir/classnames.json.tmp" && mv "$dir/classnames.json.tmp" "$dir/classnames.json"
  fi
  [[ -f "$dir/prompts.jsonl" ]] || python -m zoomshot_jax.tools.synthetic prompts \
    --attributes="$attributes/$word.json" --classnames="$dir/classnames.json" \
    --out="$dir/prompts.jsonl"
  if [[ ! -d "$dir/images" ]]; then
    if [[ -z "${GENERATE:-}" ]]; then
      echo "Prompts for $word: $dir/prompts.jsonl. Set GENERATE to your text-to-image" \
           "command (it gets the prompts file and the images directory) and run again." >&2
      continue
    fi
    $GENERATE "$dir/prompts.jsonl" "$dir/images.tmp" && mv "$dir/images.tmp" "$dir/images"
  fi
  [[ -d "$dir/filtered" ]] || python -m zoomshot_jax.tools.synthetic filter \
    --clip="$teacher" --images="$dir/images" --classnames="$dir/classnames.json" \
    --out="$dir/filtered"
  [[ -f "$dir/stage2/results.json" ]] || python -m zoomshot_jax.main \
    --config="configs/distill.py:$student,stage2,$word" --workdir="$dir/stage2" \
    --config.student.checkpoint="$root/stage1/export/student" \
    --config.data.dataset="folder:$dir/filtered" \
    --config.data.classnames_file="$dir/classnames.json" "${eval_args[@]}" "${common[@]}"
done

python - "$root" ${DATASETS:-pets food cars flowers aircraft dtd} <<'EOF'
import json, os, sys
root, words = sys.argv[1], sys.argv[2:]
lines = ["| dataset | student top-1 % | teacher top-1 % |", "|---|---|---|"]
for w in words:
  path = os.path.join(root, w, "stage2", "results.json")
  if not os.path.exists(path):
    lines.append(f"| {w} | (not run) | |")
    continue
  r = json.load(open(path))
  (ds, s), = r["student"].items()
  t = r.get("clip", {}).get(ds, {})
  lines.append(f"| {w} ({ds}) | {s['top1']:.1f} | {t.get('top1', float('nan')):.1f} |")
open(os.path.join(root, "results.md.tmp"), "w").write("\n".join(lines) + "\n")
os.replace(os.path.join(root, "results.md.tmp"), os.path.join(root, "results.md"))
print("\n".join(lines))
EOF
