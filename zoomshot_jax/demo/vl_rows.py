"""The demo's VL rows: the VL student on the world's VQA, SNLI-VE and VCR.

One run of the vl_finetune program (docs/vl.md) per task in config.vl.tasks
at config.vl.regime (the issue's: 1% low-shot, a seeded 1% of the world's
2,000 training images of each task), with the demo's seed, scored on the
world's val split (400 images), by each method of config.vl.methods: the
student without CLIP (the baseline) and with CLIP-TD (the demo's CLIP as the
teacher; docs/clip_td.md), side by side in one table (METHODS). Beside them,
text-only references from the same files: the most common answer (VQA) or
label (SNLI-VE) of the run's training examples given to every val example,
and VCR's chance.

Workdir: vl/data/ (the world files and tokenizer, shared by the tasks),
vl/<task>_<regime>/ (each baseline run's workdir), vl/<method>/<task>_<regime>/
(any other method's).
"""

from __future__ import annotations

import collections
import os

import numpy as np

from zoomshot_jax.configs import vl_finetune as vl_config
from zoomshot_jax.errors import UserError
from zoomshot_jax.programs import vl_finetune
from zoomshot_jax.vl import protocols, vqa_eval
from zoomshot_jax.world import vl_files

# (results key, table label, config.distill.mode), in the table's column
# order; config.vl.methods picks among them.
METHODS = (("baseline", "VL student, no CLIP", "none"),
           ("clip_td", "VL student + CLIP-TD", "clip_td"))
# configs/vl_finetune.py's regimes but the shift: its second val set has no
# place in a row of one number per task and metric.
REGIMES = tuple(r for r in vl_config.REGIMES if r != "shift")


def task_config(config, task: str, data_dir: str, mode: str = "none", teacher: str = ""):
  """The vl_finetune config of one task on the world, at config.vl.regime.

  data_dir: the world files' folder shared by every task (the writers keep
  each task in its own subfolder; the tokenizer is common). mode: CLIP-TD's
  config.distill.mode, teacher its CLIP (the demo's).
  """
  micro = config.world.scale == "micro"   # 16 images and 4 steps: seconds per task
  c = vl_config.get_config(f"{task},world,{config.vl.regime},{mode}"
                           + (",tiny" if micro else ""))
  c.distill.teacher = teacher
  c.seed = config.seed
  c.data.dir = data_dir
  c.world.seed = config.world.seed
  c.mesh = config.mesh
  return c


def check(config) -> None:
  """Refuses bad config.vl values in one line, before any stage of the demo runs."""
  v = config.vl
  bad = [t for t in v.tasks if t not in vl_config.TASKS]
  if bad or len(set(v.tasks)) != len(v.tasks):
    # ml_collections reads "vqa,vcr" as the one task 'vqa,vcr'.
    hint = " (a tuple: --config.vl.tasks=\"('vqa','vcr')\")" if "," in "".join(bad) else ""
    raise UserError(f"config.vl.tasks={tuple(v.tasks)}: expected distinct tasks of "
                    f"{list(vl_config.TASKS)}, or () for no VL rows{hint}.")
  if v.regime not in REGIMES:
    raise UserError(f"config.vl.regime={v.regime!r}: expected one of {list(REGIMES)}.")
  keys = [m[0] for m in METHODS]
  if not v.methods or any(m not in keys for m in v.methods):
    raise UserError(f"config.vl.methods={tuple(v.methods)}: expected some of {keys}.")
  for task in v.tasks:
    vl_finetune.validate(task_config(config, task, ""))


def val_key(c) -> str:
  """The key of the val set's metrics in vl_finetune's results."""
  return f"{c.task}_{vl_files.SPLIT_NAMES[c.task][c.data.eval_split]}"


def run_dir(workdir: str, method: str, task: str, regime: str) -> str:
  name = f"{task}_{regime}"
  return os.path.join(workdir, "vl", *(() if method == "baseline" else (method,)), name)


def text_only(c) -> tuple[int, dict]:
  """(training examples of the run, the text-only reference's val metrics).

  Reads the world files the run trained on (no images) and cuts the same
  low-shot subset (protocols.low_shot, config.data.subset_seed).
  """
  task, d = c.task, c.data
  folder = os.path.join(d.dir, "clean", task)

  def read(split):
    files = vl_finetune.task_files(task, folder, split)
    return vl_finetune.READERS[task](**files, check_images=False)

  train, val = read(d.train_split), read(d.eval_split)
  _, percent = vl_finetune.parse_regime(c.regime)
  if percent is not None:
    train = protocols.low_shot(train, percent, d.subset_seed)
  if task == "vqa":
    answer = collections.Counter(r.multiple_choice_answer for r in train).most_common(1)[0][0]
    s = vqa_eval.score_predictions(
        [{"question_id": r.question_id, "answer": answer} for r in val],
        vl_finetune.task_files(task, folder, d.eval_split)["annotations"])
    return len(train), {"overall": s["overall"], "per_answer_type": s["per_answer_type"],
                        "answer": answer}
  if task == "snli_ve":
    label = collections.Counter(r.label for r in train).most_common(1)[0][0]
    return len(train), {"accuracy": 100.0 * float(np.mean([r.label == label for r in val]))}
  # VCR: a guess among the candidates (4 answers, 4 rationales in the world).
  a, r = len(val[0].answer_choices), len(val[0].rationale_choices)
  return len(train), {"q2a": 100.0 / a, "qa2r": 100.0 / r, "q2ar": 100.0 / (a * r)}


def run(config, workdir: str, stage, timings: dict, clip_dir: str = "") -> dict:
  """Each task of config.vl.tasks fine-tuned by each method, one console stage
  per task (`stage(name, timings)`, the demo's); returns results.json's "vl":
  {"regime", "seed", "tasks", "methods": [[key, label]], "rows": {task: {method:
  val metrics as vl_finetune's evaluator gives them}}, "train_examples":
  {task: n}, "references": {task: text-only metrics}}. clip_dir: CLIP-TD's
  teacher, the demo's CLIP ("" = the shipped one)."""
  v = config.vl
  data_dir = os.path.join(workdir, "vl", "data")
  out = {"regime": v.regime, "seed": config.seed, "tasks": list(v.tasks),
         "methods": [[key, label] for key, label, _ in METHODS if key in v.methods],
         "rows": {}, "train_examples": {}, "references": {}}
  for task in v.tasks:
    with stage(f"vl: {task}", timings):
      row = out["rows"][task] = {}
      for key, _, mode in METHODS:
        if key not in v.methods:
          continue
        c = task_config(config, task, data_dir, mode, clip_dir)
        res = vl_finetune.run(c, run_dir(workdir, key, task, v.regime))
        row[key] = res["results"][val_key(c)]
      out["train_examples"][task], out["references"][task] = text_only(c)
      out["student"] = c.student.preset
  return out
