r"""The CLIP-TD table: the VL student fine-tuned on the demo world's three
tasks without CLIP (the baseline), with naive distillation and with CLIP-TD
(--methods: configs/vl_finetune.py's distill words), low-shot (1%, 10%) and
full, and under the clean -> photo shift, over seeds; mean ± std, one
markdown table, and the issue's goal checks.

  python launch/vl_baselines.py --root=/tmp/vl_td                    # the README's table
  python launch/vl_baselines.py --root=DIR --tasks=vqa --seeds=0 --regimes=low1 --methods=none
  python launch/vl_baselines.py --data=real --root=gs://B/clip_td --seeds=0 \
      --dirs=vqa=gs://B/vqa,snli_ve=gs://B/snli_ve,vcr=gs://B/vcr \
      --regimes=low0.1,low1,low5,low10,full,shift --pod=my-pod,us-central2-b,v4-32

--data=real runs the paper-scale configs (configs/vl_finetune.py's "real":
ViLT-B/32 from bert-base-uncased and a ViT, OpenAI's CLIP ViT-B/32 as the
teacher) on the files as distributed under each task's --dirs folder, one
column per regime; shift is VQA-CP v2 for VQA (its files beside VQA's) and,
for VCR, the held-out-movies split of train + val written to
--root/vcr_held_out_movies.json (20% of the examples, seed 0); SNLI-VE's
shift needs --snli_ve_split_file. With --pod=TPU_NAME,ZONE,ACCELERATOR each
run goes through launch/tpu_pod.sh (--root and the data then on GCS).

Each run is the binary (`python -m zoomshot_jax.main
--config=configs/vl_finetune.py:<task>,world,<regime>`) in its own process,
--parallel at a time, with config.seed = config.data.subset_seed = the seed
(a seed picks the low-shot examples and the initialisation; the world's
files are the same for every run: written once under --root/world_data
before the runs start). "full" is not run on its own: the shift regime
trains on the same full clean training set and reports the clean val split
too, which is the 100% row. A workdir whose results.json exists is kept
(rerun the script to finish an interrupted table). Prints the table and the
wall time; writes --root/table.md and --root/table.json.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from bench_util import check_args, usage_error  # launch/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string("root", "/tmp/vl_baselines", "Workdirs, world files and the table.")
flags.DEFINE_list("tasks", ["vqa", "snli_ve", "vcr"], "Tasks.")
flags.DEFINE_list("regimes", ["low1", "low10", "shift"], "Regimes (shift also gives 100%).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("methods", ["none", "naive", "clip_td"],
                  "config.distill.mode of each row: none (baseline), naive, select, weight, "
                  "clip_td.")
flags.DEFINE_enum("data", "world", ["world", "real"], "The world's files or the real datasets.")
flags.DEFINE_list("dirs", [], "real: task=folder of its files as distributed, per task.")
flags.DEFINE_string("snli_ve_split_file", "", "real: SNLI-VE's shift split file.")
flags.DEFINE_string("pod", "", "real: TPU_NAME,ZONE,ACCELERATOR to run each through "
                    "launch/tpu_pod.sh.")
flags.DEFINE_bool("only_existing", False,
                  "Run nothing: the table of the runs whose results.json exists.")
flags.DEFINE_integer("parallel", 2, "Runs at a time (each on one XLA CPU device).")
FLAGS = flags.FLAGS

# The metric a task's row reports, and the names in results.json.
METRICS = {"vqa": ("overall", "VQA accuracy"), "snli_ve": ("accuracy", "accuracy"),
           "vcr": ("q2ar", "Q→AR")}


def _write_world(task: str, data_dir: str) -> None:
  """The world files every run of `task` reads, written by the program's own code."""
  from zoomshot_jax.configs import vl_finetune as cfg_lib  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.programs import vl_finetune  # pylint: disable=g-import-not-at-top
  config = cfg_lib.get_config(f"{task},world,shift")
  config.data.dir = data_dir
  vl_finetune.write_world(config, data_dir, "clean", ["train", config.data.eval_split])
  vl_finetune.write_world(config, data_dir, "photo", [config.data.eval_split])
  vl_finetune.world_tokenizer(data_dir)


LABELS = {"none": "baseline (no CLIP)", "naive": "naive distillation", "select": "selection only",
          "weight": "weighting only", "clip_td": "CLIP-TD"}


def _run(task: str, regime: str, seed: str, method: str, data_dir: str) -> dict:
  name = f"{task}_{regime}_seed{seed}" if method == "none" else f"{task}_{regime}_{method}_seed{seed}"
  workdir = os.path.join(FLAGS.root, name)
  results = os.path.join(workdir, "results.json")
  start = time.time()
  if not os.path.exists(results) and FLAGS.only_existing:
    return {"task": task, "regime": regime, "seed": seed, "method": method, "missing": True}
  if not os.path.exists(results):
    config = f"configs/vl_finetune.py:{task},{FLAGS.data},{regime},{method}"
    overrides = [f"--config.seed={seed}", f"--config.data.subset_seed={seed}",
                 f"--config.data.dir={data_dir}", *_split_file(task, regime)]
    if FLAGS.pod:
      tpu, zone, accel = FLAGS.pod.split(",")
      cmd = ["bash", "launch/tpu_pod.sh", tpu, zone, accel, config, workdir, *overrides]
      env = dict(os.environ)
    else:
      cmd = [sys.executable, "-m", "zoomshot_jax.main", f"--config={config}",
             f"--workdir={workdir}", *overrides]
      env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      print(f"{task} {regime} {method} seed {seed}: failed (rc {proc.returncode}): "
            f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
      return {"task": task, "regime": regime, "seed": seed, "method": method,
              "error": proc.returncode}
  with open(results) as f:
    out = json.load(f)
  print(f"{task} {regime} {method} seed {seed}: done in {time.time() - start:.0f}s", flush=True)
  return {"task": task, "regime": regime, "seed": seed, "method": method, "results": out,
          "seconds": time.time() - start}


def _split_file(task: str, regime: str) -> list[str]:
  """The shift split file override of a real run (VQA uses VQA-CP v2's files)."""
  if FLAGS.data != "real" or regime != "shift" or task == "vqa":
    return []
  if task == "snli_ve":
    if not FLAGS.snli_ve_split_file:
      raise usage_error("--regimes has shift and --tasks snli_ve: give --snli_ve_split_file "
                        "({\"train\": [ids], \"test\": [ids]}).")
    return [f"--config.data.split_file={FLAGS.snli_ve_split_file}"]
  return [f"--config.data.split_file={os.path.join(FLAGS.root, 'vcr_held_out_movies.json')}"]


def _write_vcr_split(folder: str) -> None:
  """VCR's held-out-movies split of train + val (20%, seed 0), written once."""
  from zoomshot_jax import io_utils  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.programs import vl_finetune  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.vl import protocols, readers  # pylint: disable=g-import-not-at-top
  path = os.path.join(FLAGS.root, "vcr_held_out_movies.json")
  if os.path.exists(path):
    return
  records = [r for split in ("train", "val") for r in readers.read_vcr(
      **vl_finetune.task_files("vcr", folder, split), check_images=False)]
  train, test = protocols.held_out_movies_split(records, 0.2, 0)
  io_utils.atomic_write_json(path, {"train": train, "test": test})


def _values(runs: list[dict], task: str, regime: str, photo: bool, method: str = "none"
            ) -> list[float]:
  """The task's metric over seeds, on the clean val split or its photo rendering."""
  key = METRICS[task][0]
  out = []
  for r in runs:
    if (r["task"] != task or r["regime"] != regime or r.get("method", "none") != method
        or "results" not in r):
      continue
    # results.json: {<eval set>: {metric: value}}; the photo set's name ends in "_photo".
    sets = {name: m for name, m in r["results"].items() if isinstance(m, dict)}
    chosen = [m for name, m in sets.items() if name.endswith("_photo") == photo]
    if chosen and key in chosen[0]:
      out.append(float(chosen[0][key]))
  return out


def _cell(values: list[float]) -> str:
  if not values:
    return "—"
  return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


COLUMNS = [("low1", False, "1%"), ("low10", False, "10%"), ("shift", False, "100%"),
           ("shift", True, "100%, clean → photo")]


def columns() -> list[tuple[str, bool, str]]:
  """(regime, photo set, heading): the world's fixed columns (its shift runs
  give 100% too), or one per --regimes on real data."""
  if FLAGS.data == "world":
    return COLUMNS
  names = {"full": "100%", "shift": "shift (VQA-CP v2 / split file)"}
  return [(r, False, names.get(r, r.replace("low", "") + "%")) for r in FLAGS.regimes]


def table(runs: list[dict]) -> str:
  cols = columns()
  lines = ["| task (metric) | method | " + " | ".join(c[2] for c in cols) + " |",
           "| --- | --- |" + " ---: |" * len(cols)]
  for task in FLAGS.tasks:
    for method in FLAGS.methods:
      cells = [_cell(_values(runs, task, regime, photo, method))
               for regime, photo, _ in cols]
      lines.append(f"| {task} ({METRICS[task][1]}) | {LABELS.get(method, method)} | "
                   + " | ".join(cells) + " |")
  return "\n".join(lines)


def goals(runs: list[dict]) -> str:
  """The issue's goal per task, from the table's numbers: CLIP-TD beats the
  baseline at 1% and under the shift by more than the seeds' spread (the
  larger of the two stds), beats naive distillation there, and is not worse
  than the baseline at 100% (by more than that spread)."""
  if "clip_td" not in FLAGS.methods or "none" not in FLAGS.methods:
    return ""
  out = []
  for task in FLAGS.tasks:
    for regime, photo, label in columns():
      if regime not in ("low1", "shift", "full"):
        continue
      v = {m: _values(runs, task, regime, photo, m) for m in FLAGS.methods}
      if not v["clip_td"] or not v["none"]:
        continue
      td, base = np.mean(v["clip_td"]), np.mean(v["none"])
      spread = max(np.std(v["clip_td"]), np.std(v["none"]))
      if label == "100%" or regime == "full":
        ok = td >= base - spread
        what = f"not worse than the baseline: {td - base:+.1f} (spread {spread:.1f})"
      else:
        ok = td - base > spread
        what = f"beats the baseline by more than the spread: {td - base:+.1f} (spread {spread:.1f})"
        if v.get("naive"):
          nv = np.mean(v["naive"])
          ok = ok and td > nv
          what += f"; vs naive {td - nv:+.1f}"
      out.append(f"- {task}, {label}: {what}: {'met' if ok else 'NOT met'}")
  return "\n".join(out)


def main(argv):
  check_args(argv, FLAGS, parallel=1)
  from zoomshot_jax import console  # pylint: disable=g-import-not-at-top
  # The world writer's TF/jax chatter goes to <root>/log.txt, as in the binary.
  console.setup(FLAGS.root)
  start = time.time()
  if FLAGS.data == "world":
    data_dir = os.path.join(FLAGS.root, "world_data")
    for task in FLAGS.tasks:
      _write_world(task, data_dir)
    print(f"world files: {data_dir} ({time.time() - start:.0f}s)", flush=True)
    dirs = {t: data_dir for t in FLAGS.tasks}
  else:
    dirs = dict(d.split("=", 1) for d in FLAGS.dirs)
    missing = [t for t in FLAGS.tasks if t not in dirs]
    if missing:
      raise usage_error(f"--data=real: --dirs has no folder for {missing} (task=folder).")
    if "vcr" in FLAGS.tasks and "shift" in FLAGS.regimes:
      _write_vcr_split(dirs["vcr"])
  jobs = [(t, r, s, m) for s in FLAGS.seeds for m in FLAGS.methods for t in FLAGS.tasks
          for r in FLAGS.regimes]
  with concurrent.futures.ThreadPoolExecutor(FLAGS.parallel) as pool:
    runs = list(pool.map(lambda j: _run(*j[:4], dirs[j[0]]), jobs))
  text = table(runs)
  checks = goals(runs)
  if checks:
    text += "\n\nGoals (CLIP-TD vs the other rows, means over seeds):\n" + checks
  took = time.time() - start
  print(f"\n{len(FLAGS.seeds)} seeds, mean ± std (population std), {took / 60:.1f} min wall "
        f"on {os.cpu_count()} cores, {FLAGS.parallel} runs at a time:\n{text}")
  for name, body in (("table.md", text + "\n"), ("table.json", json.dumps(
      {"runs": runs, "wall_s": took}, indent=1))):
    tmp = os.path.join(FLAGS.root, name + ".tmp")
    with open(tmp, "w") as f:
      f.write(body)
    os.replace(tmp, os.path.join(FLAGS.root, name))
  print(f"Table: {os.path.join(FLAGS.root, 'table.md')} (runs: table.json; log: log.txt)")
  if any("error" in r for r in runs):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
