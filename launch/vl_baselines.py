r"""The CLIP-TD baseline table: the VL student fine-tuned without CLIP on the
demo world's three tasks, low-shot (1%, 10%) and full, and under the clean ->
photo shift, over seeds; mean ± std, one markdown table.

  python launch/vl_baselines.py --root=/tmp/vl_baselines            # the README's table
  python launch/vl_baselines.py --root=DIR --tasks=vqa --seeds=0 --regimes=low1

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string("root", "/tmp/vl_baselines", "Workdirs, world files and the table.")
flags.DEFINE_list("tasks", ["vqa", "snli_ve", "vcr"], "Tasks.")
flags.DEFINE_list("regimes", ["low1", "low10", "shift"], "Regimes (shift also gives 100%).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
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


def _run(task: str, regime: str, seed: str, data_dir: str) -> dict:
  workdir = os.path.join(FLAGS.root, f"{task}_{regime}_seed{seed}")
  results = os.path.join(workdir, "results.json")
  start = time.time()
  if not os.path.exists(results):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [sys.executable, "-m", "zoomshot_jax.main",
         f"--config=configs/vl_finetune.py:{task},world,{regime}", f"--workdir={workdir}",
         f"--config.seed={seed}", f"--config.data.subset_seed={seed}",
         f"--config.data.dir={data_dir}"], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      print(f"{task} {regime} seed {seed}: failed (rc {proc.returncode}): "
            f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
      return {"task": task, "regime": regime, "seed": seed, "error": proc.returncode}
  with open(results) as f:
    out = json.load(f)
  print(f"{task} {regime} seed {seed}: done in {time.time() - start:.0f}s", flush=True)
  return {"task": task, "regime": regime, "seed": seed, "results": out,
          "seconds": time.time() - start}


def _values(runs: list[dict], task: str, regime: str, photo: bool) -> list[float]:
  """The task's metric over seeds, on the clean val split or its photo rendering."""
  key = METRICS[task][0]
  out = []
  for r in runs:
    if r["task"] != task or r["regime"] != regime or "results" not in r:
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


def table(runs: list[dict]) -> str:
  columns = [("low1", False, "1%"), ("low10", False, "10%"), ("shift", False, "100%"),
             ("shift", True, "100%, clean → photo")]
  lines = ["| task (metric) | " + " | ".join(c[2] for c in columns) + " |",
           "| --- |" + " ---: |" * len(columns)]
  for task in FLAGS.tasks:
    cells = [_cell(_values(runs, task, regime, photo)) for regime, photo, _ in columns]
    lines.append(f"| {task} ({METRICS[task][1]}) | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  from zoomshot_jax import console  # pylint: disable=g-import-not-at-top
  # The world writer's TF/jax chatter goes to <root>/log.txt, as in the binary.
  console.setup(FLAGS.root)
  start = time.time()
  data_dir = os.path.join(FLAGS.root, "world_data")
  for task in FLAGS.tasks:
    _write_world(task, data_dir)
  print(f"world files: {data_dir} ({time.time() - start:.0f}s)", flush=True)
  jobs = [(t, r, s) for s in FLAGS.seeds for t in FLAGS.tasks for r in FLAGS.regimes]
  with concurrent.futures.ThreadPoolExecutor(FLAGS.parallel) as pool:
    runs = list(pool.map(lambda j: _run(*j, data_dir), jobs))
  text = table(runs)
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
