#!/usr/bin/env bash
# Every benchmark in launch/ at accelerator sizes on ONE GPU, within a fixed
# time budget (default 560 s, under 10 minutes in all), then ONE markdown table
# to stdout and to --out (written atomically: temp name, then rename). Each
# benchmark runs in its own process under its own `timeout`: one that fails
# or hangs becomes a "failed"/"timeout" row and the rest still run. The logs
# of all of them go to one file beside the table (<out without .md>.log).
#
#   bash launch/device_check.sh --out=/tmp/device_check.md   # a GPU, jax[cuda12]
#   bash launch/device_check.sh --smoke                      # tiny sizes, any CPU
#   bash launch/device_check.sh --fetch-wheels               # see below
#
# Options: --out=PATH (default device_check.md), --smoke, --budget=SECONDS,
# --fetch-wheels. Environment: PYTHON (default .venv/bin/python if present,
# else python3), WHEELS (default .whl). Exit status 0 only if every benchmark
# finished.
#
# Needs jax with a GPU backend, flax, optax, ml_collections and transformers<5
# (the Flax CLIP classes; transformers 5 dropped them); torch with CUDA for the
# PyTorch baselines (without it: ours only, noted in the table). TensorFlow is
# not needed (bench_util.stub_missing). What is missing is printed first.
# On a host that cannot reach a package index, wheels in $WHEELS/ are
# installed into a private directory first; `--fetch-wheels`, run on a host
# that can, downloads the pure-Python pins this project is tested with
# (transformers, tokenizers, huggingface_hub, ml_collections) for CPython 3.12.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

OUT=device_check.md SMOKE=0 FETCH=0 BUDGET=""
for arg in "$@"; do
  case $arg in
    --out=*) OUT=${arg#*=} ;;
    --smoke) SMOKE=1 ;;
    --budget=*) BUDGET=${arg#*=} ;;
    --fetch-wheels) FETCH=1 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_check.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=${WHEELS:-.whl}
PINS="transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 ml_collections==1.1.0"

if [ "$FETCH" = 1 ]; then
  # shellcheck disable=SC2086
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" $PINS
fi

START=$(date +%s)
LOG=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if [ "$SMOKE" = 1 ]; then
  BUDGET=${BUDGET:-275}
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
else
  BUDGET=${BUDGET:-560}
  # JAX and torch share the GPU in the CLIP and Text-to-Concept processes.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    SITE=${TMPDIR:-/tmp}/zoomshot_site
    echo "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels from $WHEELS/ into $SITE" >&2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHEELS"/*.whl >&2 || echo "wheel install FAILED" >&2
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  fi
fi

# ---- What is here: versions, the accelerator, what is missing.
GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  2>/dev/null | head -1)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PY" - "$LOG/env.json" "$SMOKE" <<'PYEOF' >&2
import importlib.metadata as md, importlib.util as iu, json, platform, sys
env = {"python": f"{platform.python_version()} ({sys.executable})", "missing": []}
def ver(name):
  try:
    return md.version(name)
  except md.PackageNotFoundError:
    return None
for dist in ("jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
             "transformers", "ml_collections"):
  env[dist] = ver(dist)
try:
  import jax
  env.update(jax=jax.__version__, backend=jax.default_backend(), device_count=jax.device_count(),
             device_kind=jax.devices()[0].device_kind)
except Exception as e:  # pylint: disable=broad-except
  env.update(jax=ver("jax"), backend=None)
  env["missing"].append(f"jax does not start: {type(e).__name__}: {e}"[:300])
env["gpu_ok"] = sys.argv[2] == "1" or env["backend"] in ("gpu", "cuda", "rocm")
if not env["gpu_ok"]:
  env["missing"].append(
      f"jax sees no GPU (backend {env['backend']}, jax {env['jax']}, plugins: cuda12 "
      f"{env['jax-cuda12-plugin']}, cuda13 {env['jax-cuda13-plugin']}): pip install "
      f"'jax[cuda12]=={env['jax']}' (or carry jax-cuda12-plugin and jax-cuda12-pjrt "
      f"{env['jax']} wheels)")
for mod in ("flax", "optax", "ml_collections", "absl"):
  if iu.find_spec(mod) is None:
    env["missing"].append(f"{mod} is not installed")
try:
  import transformers
  env["flax_clip"] = hasattr(transformers, "FlaxCLIPModel")
  if not env["flax_clip"]:
    env["missing"].append(f"transformers {transformers.__version__} has no FlaxCLIPModel "
                          "(removed in 5.x): the CLIP rows need transformers<5, e.g. "
                          "transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2")
except Exception as e:  # pylint: disable=broad-except
  env["flax_clip"] = False
  env["missing"].append(f"transformers does not import: {type(e).__name__}: {e}"[:300])
try:
  import torch
  env["torch"] = torch.__version__
  env["torch_cuda"] = torch.cuda.is_available()
except ImportError:
  env["torch"], env["torch_cuda"] = None, False
env["tensorflow"] = ver("tensorflow") or ver("tensorflow-cpu")
json.dump(env, open(sys.argv[1], "w"))
print("environment:", json.dumps({k: v for k, v in env.items() if k != "missing"}))
for m in env["missing"]:
  print("MISSING:", m)
PYEOF
[ -s "$LOG/env.json" ] || echo '{"missing": ["the preflight python did not run"]}' >"$LOG/env.json"

# ---- The benchmarks. bench NAME CAP RESERVE ARGS...: runs `python ARGS
# --json_out=...` under `timeout`, for min(CAP, what is left of the budget
# after RESERVE seconds kept for the benchmarks after it); @LIMIT@ in ARGS
# becomes that timeout minus 15 s (for a benchmark that stops itself cleanly).
bench() {
  local name=$1 cap=$2 reserve=$3 left t rc s
  shift 3
  left=$((BUDGET - ($(date +%s) - START) - reserve))
  t=$((cap < left ? cap : left))
  if [ "$t" -lt 15 ]; then
    echo "skip 0 0" >"$LOG/$name.status"
    return
  fi
  set -- "${@//@LIMIT@/$((t - 15))}"
  echo "[$(( $(date +%s) - START ))s] $name: timeout ${t}s: $*" >&2
  s=$(date +%s)
  timeout -k 10 "$t" "$PY" "$@" --json_out="$LOG/$name.json" >"$LOG/$name.log" 2>&1
  rc=$?
  echo "$rc $(( $(date +%s) - s )) $t" >"$LOG/$name.status"
  echo "[$(( $(date +%s) - START ))s] $name: rc $rc" >&2
}
skip() { echo "$2" >"$LOG/$1.status"; }

CPUS=$(nproc 2>/dev/null || echo 4)
FLAX_CLIP=$(grep -c '"flax_clip": true' "$LOG/env.json")
if ! grep -q '"gpu_ok": true' "$LOG/env.json"; then
  for n in clip_b16_bf16 clip_b16_f32 clip_l14_bf16 zoomshot distill vl clip_td asif; do
    skip $n "not run: no accelerator for jax (see MISSING above)"
  done
elif [ "$SMOKE" = 1 ]; then
  C="launch/bench_clip_throughput.py --arch=tiny --batch_size=8 --steps=3 --warmup=1"
  for spec in "clip_b16_bf16 bfloat16" "clip_b16_f32 float32" "clip_l14_bf16 bfloat16"; do
    set -- $spec
    # shellcheck disable=SC2086
    bench "$1" 60 225 $C --dtype="$2" --measure_peak_n=256
  done
  bench zoomshot 70 205 launch/bench_text_to_concept.py --parts=t2c,zoomshot --n=2000 \
    --heldout=500 --classes=10 --templates=4 --zs_batches=64,128 --zs_steps=5 --zs_warmup=2
  bench distill 60 145 launch/bench_distill.py --teacher=small --student=world_resnet \
    --image_size=48 --batch_size=32 --steps=3
  bench vl 60 115 launch/bench_vl.py --preset=world_tiny --image_size=32 --text_length=16 \
    --num_answers=64 --batch_size=8 --steps=2
  bench clip_td 75 40 launch/bench_clip_td.py --batch_size=16 --steps=2
  bench asif 80 0 launch/bench_asif.py --anchors=20000 --queries=500 --classes=10 \
    --templates=4 --k=50 --layouts=anchors --data_threads=2 --time_limit=@LIMIT@
else
  # The reserves: with every benchmark using all it may, they still get at
  # least 60, 45, 45, 60, 90, 60, 60 and 120 s in turn (after ~20 s of preflight).
  C=launch/bench_clip_throughput.py
  if [ "$FLAX_CLIP" = 1 ]; then
    bench clip_b16_bf16 120 480 $C --arch=b16 --dtype=bfloat16 --batch_size=512 --steps=10 \
      --warmup=3 --measure_peak_n=8192
    bench clip_b16_f32 100 435 $C --arch=b16 --dtype=float32 --batch_size=256 \
      --measure_peak_n=8192
    bench clip_l14_bf16 150 390 $C --arch=l14 --dtype=bfloat16 --batch_size=256 \
      --measure_peak_n=8192
  else
    for n in clip_b16_bf16 clip_b16_f32 clip_l14_bf16; do
      skip $n "not run: transformers<5 (Flax CLIP) is missing"
    done
  fi
  bench zoomshot 120 330 launch/bench_text_to_concept.py --parts=t2c,zoomshot \
    --zs_batches=256,1024,4096 --zs_steps=200 --zs_warmup=5
  bench distill 90 240 launch/bench_distill.py --teacher=b32 --student=vit_tiny \
    --batch_size=256 --steps=10
  bench vl 75 180 launch/bench_vl.py --preset=vilt_b32 --image_size=384 --text_length=40 \
    --num_answers=3129 --batch_size=64 --steps=10 --torch_device=auto
  bench clip_td 60 120 launch/bench_clip_td.py --preset=vilt_b32 --image_size=384 \
    --teacher=b32 --text_length=40 --teacher_length=40 --num_answers=3129 --batch_size=32
  bench asif 240 0 launch/bench_asif.py --anchors=1600000 --queries=50000 --layouts=anchors \
    --data_threads="$CPUS" --time_limit=@LIMIT@
fi

# ---- The table.
TABLE=$LOG/table.md
"$PY" - "$LOG" "$SMOKE" "$GPU_NAME" "$COMMIT" "$BUDGET" "$(( $(date +%s) - START ))" \
  >"$TABLE" <<'PYEOF'
import datetime, json, os, re, sys
log, smoke, gpu, commit, budget, took = sys.argv[1:7]
env = json.load(open(os.path.join(log, "env.json")))
def load(name):
  st = open(os.path.join(log, name + ".status")).read().split(maxsplit=2)
  path = os.path.join(log, name + ".json")
  res = json.load(open(path)) if os.path.exists(path) else None
  return st, res
def why(name, st):
  if not st[0].lstrip("-").isdigit():
    return " ".join(st) if st[0] != "skip" else "not run: time budget used up"
  rc, secs, limit = (int(x) for x in st)
  lines = [l for l in open(os.path.join(log, name + ".log"), errors="replace").read().splitlines()
           if l.strip() and not re.match(r"^[IW]\d{4} |^WARNING: All log|^I0000", l)]
  last = (lines[-1] if lines else "no output").replace("|", "/")[:160]
  if rc in (124, 137):
    return f"**timeout** after {limit} s ({last})"
  return f"**failed** (rc {rc}, {secs} s): {last}"
def f(x, fmt="{:,.0f}"):
  return "—" if x is None else fmt.format(x)
rows = []
torch_note = ("torch not installed: ours only" if env.get("torch") is None else
              None if env.get("torch_cuda") or smoke == "1" else
              f"torch {env['torch']} has no CUDA: ours only")
for name, label in (("clip_b16_bf16", "CLIP ViT-B/16 image features, bf16"),
                    ("clip_b16_f32", "CLIP ViT-B/16 image features, float32"),
                    ("clip_l14_bf16", "CLIP ViT-L/14 image features, bf16")):
  st, r = load(name)
  if st[0] != "0" or not r:
    rows.append([label, "", why(name, st), "", "", ""]); continue
  if smoke == "1":
    label += f" (smoke: {r['arch']})"
  o, t = r["ours"], r["pytorch"]
  ours = f"{f(o['images_per_s'])} images/s, {o['tflops']:.3g} TFLOP/s"
  if o["peak_fraction"] is not None:
    ours += f", **{o['peak_fraction']:.1%}** of {r['spec_peak_tflops']:g} (spec)"
  if o["measured_peak_fraction"] is not None:
    ours += f", {o['measured_peak_fraction']:.1%} of {r['measured_peak_tflops']:.3g} (measured)"
  note = f"{r['gflop_per_image']:.3g} GFLOP/image; {st[1]} s"
  note += f"; {r['pytorch_desc']}" if r["pytorch_desc"] else ""
  note += f"; {r['pytorch_note']}" if r["pytorch_note"] and not torch_note else ""
  if r["dtype"] == "float32":
    note += "; jax's default matmul precision"
  rows.append([label, f"batch {r['batch']}, {r['image_size']} px", ours,
               f"{f(t['images_per_s'])} images/s" if t else "—",
               f"{r['ratio']:.2f}×" if r["ratio"] else "—", note])
st, r = load("zoomshot")
if st[0] == "0" and r and "zoomshot" in r:
  zs, t2c = r["zoomshot"], r["t2c"]["rows"]
  rows.append(["Zoom-shot training (cached features, 5 terms, AdamW)",
               f"{r['n']:,} rows, batch " + " / ".join(str(x["batch"]) for x in zs["rows"]),
               " / ".join(f(x["samples_per_s"]) for x in zs["rows"]) + " samples/s", "—", "—",
               "no PyTorch Zoom-shot in the script; warm-up (compile) " +
               " / ".join(f"{x['warmup_s']:.1f}" for x in zs["rows"]) + f" s; {st[1]} s"])
  ref = t2c[0] if r["t2c"]["pytorch_ran"] else None
  ours = [x for x in t2c if x is not ref]
  rows.append(["Text-to-Concept fit (SGD recipe vs closed form)", f"{r['n']:,} rows",
               "; ".join(f"{x['fit'][6:]} {x['wall_s']:.2f} s (R² {x['heldout_r2']:.3f})"
                         for x in ours),
               f"{ref['wall_s']:.2f} s (R² {ref['heldout_r2']:.3f})" if ref else "—",
               " / ".join(f"{x['speedup_wall']:.1f}×" for x in ours) if ref else "—",
               "wall incl. compile" + ("" if ref else "; " + (torch_note or "no PyTorch run"))])
else:
  rows.append(["Zoom-shot training + Text-to-Concept fit", "", why("zoomshot", st), "", "", ""])
st, r = load("distill")
if st[0] == "0" and r:
  t = r.get("torch_images_per_s")
  rows.append([f"feature distillation step ({r['teacher']} teacher in the step, "
               f"{r['student']} student, AdamW)", f"batch {r['batch_size']}, "
               f"{r['image_size']} px", f"{f(r['ours_images_per_s'])} images/s",
               f"{f(t)} images/s ({r.get('torch_device')})" if t else "—",
               f"{r['ratio_ours_over_torch']:.2f}×" if t else "—", f"{st[1]} s"])
else:
  rows.append(["feature distillation step", "", why("distill", st), "", "", ""])
st, r = load("vl")
if st[0] == "0" and r:
  t = r.get("torch_examples_per_s")
  rows.append([f"VL fine-tuning step (VQA, {r['preset']} student, {r['num_answers']:,} "
               "answers, AdamW)", f"batch {r['batch_size']}, {r['image_size']} px, "
               f"{r['tokens']} tokens", f"{f(r['ours_examples_per_s'])} examples/s",
               f"{f(t)} examples/s ({r.get('torch_device')})" if t else "—",
               f"{r['ratio_ours_over_torch']:.2f}×" if t else "—", f"{st[1]} s"])
else:
  rows.append(["VL fine-tuning step (VQA)", "", why("vl", st), "", "", ""])
st, r = load("clip_td")
if st[0] == "0" and r:
  rows.append([f"CLIP-TD step vs the baseline step (VQA, {r['preset']} student, {r['teacher']} "
               "teacher)", f"batch {r['batch_size']}, {r['image_size']} px",
               f"{f(r['clip_td_examples_per_s'])} examples/s (baseline "
               f"{f(r['baseline_examples_per_s'])})", "—",
               f"{r['step_time_ratio']:.2f}× the baseline's step time",
               f"teacher outputs cached: {r['cached_step_time_ratio']:.2f}×; the teacher's "
               f"forward alone {f(r['teacher_forward_examples_per_s'])} examples/s; "
               f"no PyTorch CLIP-TD exists; {st[1]} s"])
else:
  rows.append(["CLIP-TD step vs the baseline step", "", why("clip_td", st), "", "", ""])
st, r = load("asif")
runs = (r or {}).get("runs", {})
o, t = runs.get("ours-anchors", {}), runs.get("pytorch", {})
if r and "times" in o:
  ot = o["times"]
  size = f"{r['anchors']:,} anchors × {r['queries']:,} queries, k {r['k']}"
  ours = f"**{ot['total']:.1f} s** cold" + (f", {ot['warm total']:.1f} s warm"
                                             if "warm total" in ot else "")
  goal = "" if smoke == "1" else f"; goal ≤ 30 s: {'met' if ot['total'] <= 30 else 'NOT met'}"
  note = f"data {r.get('data_s', 0):.0f} s (not timed){goal}"
  if "pred_diff" in o:
    note += f"; {o['pred_diff']} of {r['queries']:,} predictions differ"
  if "peak_device_mib" in o:
    note += f"; device peak {o['peak_device_mib'] / 1024:.1f} GiB"
  for x in (o, t):
    if "error" in x:
      note += f"; {x['error']}"
  tt = t.get("times")
  rows.append(["ASIF search + scoring", size, ours, f"{tt['total']:.1f} s" if tt else
               (r.get("torch_note") or t.get("error") or "—"),
               f"{ot['total'] / tt['total']:.2f}× time" if tt else "—",
               note + f"; {st[1] if st[0].isdigit() else '?'} s"])
else:
  rows.append(["ASIF search + scoring", "", why("asif", st), "", "", ""])
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
kind = env.get("device_kind") or "?"
print(f"## zoomshot_jax device check{' (SMOKE: tiny sizes, not figures)' if smoke == '1' else ''}")
print()
print(f"- device: {gpu or 'no nvidia-smi'}; jax: {env.get('backend')} backend, "
      f"{env.get('device_count', '?')} × {kind}")
print(f"- date: {date}; commit {commit}; took {took} s of a {budget} s budget")
plugin = env.get("jax-cuda13-plugin") or env.get("jax-cuda12-plugin")
print(f"- jax {env.get('jax')} (jaxlib {env.get('jaxlib')}, CUDA plugin {plugin}); flax "
      f"{env.get('flax')}; transformers {env.get('transformers')}; torch "
      f"{env.get('torch') or 'not installed'} (CUDA {env.get('torch_cuda')}); python "
      f"{env.get('python')}")
for m in env.get("missing", []):
  print(f"- MISSING: {m}")
if torch_note:
  print(f"- PyTorch baselines: {torch_note}")
print()
print("| benchmark | size | ours | PyTorch | ours / PyTorch | notes |")
print("| --- | --- | --- | --- | --- | --- |")
for row in rows:
  print("| " + " | ".join(c.replace("\n", " ") for c in row) + " |")
print()
print("CLIP: images/s from the median of timed calls after warm-up; ours / PyTorch > 1 "
      "means ours is faster. Peak fractions: 'spec' is bench_clip_throughput.py's "
      "datasheet dense bf16 peak (989 TFLOP/s for an H100/H200 SXM); 'measured' is an "
      "N³ jnp.dot (N = 8192; 256 in a smoke run) in the same dtype and process. ASIF: wall time incl. compile "
      "(cold) and a second pass (warm); ours / PyTorch < 1 means ours is faster.")
PYEOF

OUT_LOG=${OUT%.md}.log
mkdir -p "$(dirname "$OUT")"
for f in "$LOG"/*.log; do [ -e "$f" ] && { echo "==== $(basename "$f")"; cat "$f"; }; done \
  >"$OUT_LOG.tmp.$$" && mv -f "$OUT_LOG.tmp.$$" "$OUT_LOG"
cat "$TABLE"
cp "$TABLE" "$OUT.tmp.$$" && mv -f "$OUT.tmp.$$" "$OUT"
echo "wrote $OUT and $OUT_LOG" >&2
# Exit 0 only if every benchmark ran and finished.
RC=0
for f in "$LOG"/*.status; do read -r first _ <"$f"; [ "$first" = 0 ] || RC=1; done
rm -rf "$LOG"
exit $RC
