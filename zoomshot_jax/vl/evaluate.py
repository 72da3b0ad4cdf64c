"""The VL tasks' evaluator (registry type "vl_task"): the official metrics of a
fine-tuned student on each of its evaluation sets.

  vqa      the official VQA accuracy, overall and per answer type (per
           question type in the log), of the argmax answer; the answers are written in the official
           results format, predictions/vqa_<set>.json
           ([{"question_id", "answer"}]), and that list is what is scored
           (vqa_eval.score_predictions)
  snli_ve  accuracy
  vcr      Q->A, QA->R (given the right answer), Q->AR (both right)
Accuracies are x100. The pipeline pads and masks the last batch and every
host runs the same number of steps, so each example counts once on any
number of devices and hosts; predictions are gathered in the split's order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from zoomshot_jax import console, io_utils, sharding
from zoomshot_jax.data.sources import contiguous_range
from zoomshot_jax.methods import vl_tasks
from zoomshot_jax.models import vl_student
from zoomshot_jax.vl import pipeline, vqa_eval


@dataclasses.dataclass
class VLModel:
  """What the evaluator evaluates.

  eval_sets: {set name: reader records}, e.g. {"val2014": [...]} (names
    become result keys "<task>_<name>" and VQA prediction files).
  """
  module: vl_student.VLStudent
  hyper: vl_tasks.Hyper
  params: dict
  inputs: pipeline.Inputs
  eval_sets: dict[str, Sequence]


def predictions_path(workdir: str, task: str, name: str) -> str:
  return os.path.join(workdir, "predictions", f"{task}_{name}.json")


def make_step(model: VLModel, mesh):
  """The jitted (params, batch) -> {"pred"[, "r_pred"]: int32 [B]} of the model."""
  rows, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  spec, module, hyper = model.inputs.spec, model.module, model.hyper

  @functools.partial(jax.jit, in_shardings=(rep, rows), out_shardings=rows)
  def step(params, batch):
    image = spec.normalize(batch["image"])
    inputs = {k: batch[k] for k in pipeline.TEXT_KEYS}
    vcr = "r_input_ids" in batch
    if vcr:
      # Q->A and QA->R rows in one forward pass (one program to compile).
      inputs = {k: jnp.concatenate([v, batch["r_" + k]]) for k, v in inputs.items()}
      image = jnp.concatenate([image, image])
    logits, _ = vl_tasks.forward(module, hyper, params, {**inputs, "image": image})
    pred = jnp.argmax(logits, -1).astype(jnp.int32)
    if vcr:
      b = batch["image"].shape[0]
      return {"pred": pred[:b], "r_pred": pred[b:]}
    return {"pred": pred}

  return step


def predict(model: VLModel, step, params, records: Sequence, mesh, batch_size: int,
            what: str) -> dict[str, np.ndarray]:
  """Every record's argmax prediction, in the records' order (on every host):
  {"pred": [n]} (vqa: answer index; snli_ve: class; vcr: Q->A choice) and,
  for vcr, "r_pred": [n] (QA->R choice).

  Args:
    step: `make_step(model, mesh)`; params: model.params, replicated.
  """
  local_bs = sharding.local_batch_size(batch_size, mesh, "evals.batch_size")
  share = pipeline.host_share(records, jax.process_index(), jax.process_count())
  cols = pipeline.columns(model.inputs, share, train=False)
  pipeline.check_lengths(model.inputs, cols, what)
  batches, _, steps = pipeline.eval_batches(model.inputs, cols, local_bs, sharding.host_max,
                                            what)
  first = contiguous_range(len(records), jax.process_index(), jax.process_count())[0]
  rows = sharding.batch_sharding(mesh)
  keep: dict[str, list] = {"mask": [], "index": []}
  start = last = time.time()
  for i, batch in enumerate(batches):
    device = {k: v for k, v in batch.items()
              if k == "image" or k.removeprefix("r_") in pipeline.TEXT_KEYS}
    out = step(params, sharding.to_global(device, rows))
    for k, v in out.items():
      keep.setdefault(k, []).append(sharding.local_rows(v))
    keep["mask"].append(batch["mask"])
    keep["index"].append(batch["index"] + first)
    if time.time() - last > 30:
      last = time.time()
      rate = (i + 1) / (last - start)
      console.progress(f"evaluate {what}", i + 1, steps, (steps - i - 1) / rate,
                       f"{rate:.1f} steps/s")
  mask = np.concatenate(keep.pop("mask"))
  got = sharding.gather_rows({k: np.concatenate(v) for k, v in keep.items()}, mask)
  # The hosts' contiguous shares, in process order, are the records' order.
  if not np.array_equal(got["index"], np.arange(len(records))):
    raise AssertionError(f"predictions gathered out of order or incomplete: "
                         f"{len(got['index'])} for {len(records)} records")
  return got


def _annotation_entries(records) -> list[dict]:
  """The records as VQA annotation entries (the evaluation set may be a
  subset of a file: a split file's test ids)."""
  return [{"question_id": r.question_id, "image_id": r.image_id,
           "answer_type": r.answer_type, "question_type": r.question_type,
           "multiple_choice_answer": r.multiple_choice_answer,
           "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(r.answers)]}
          for r in records]


def _metrics(model: VLModel, name: str, records, got: dict, workdir: str | None) -> dict:
  task, n = model.hyper.task, len(records)
  if task == "vqa":
    answers = model.inputs.answers
    preds = [{"question_id": r.question_id, "answer": answers[int(p)]}
             for r, p in zip(records, got["pred"])]
    if workdir and jax.process_index() == 0:
      path = predictions_path(workdir, task, name)
      io_utils.atomic_write_json(path, preds)
      logging.info("VQA predictions (official results format): %s", path)
    s = vqa_eval.score_predictions(preds, _annotation_entries(records))
    logging.info("VQA %s accuracy per question type: %s", name, s["per_question_type"])
    return {"overall": s["overall"], "per_answer_type": s["per_answer_type"],
            "num_examples": s["num_questions"]}
  if task == "snli_ve":
    labels = np.asarray([r.label for r in records])
    return {"accuracy": 100.0 * float(np.mean(got["pred"] == labels)), "num_examples": n}
  a = got["pred"] == np.asarray([r.answer_label for r in records])
  r_ = got["r_pred"] == np.asarray([r.rationale_label for r in records])
  return {"q2a": 100.0 * float(a.mean()), "qa2r": 100.0 * float(r_.mean()),
          "q2ar": 100.0 * float((a & r_).mean()), "num_examples": n}


def evaluate(cfg, model: VLModel, mesh, workdir: str | None = None,
             name: str = "vl") -> dict[str, dict]:
  """{"<task>_<set>": metrics} of every evaluation set of `model`."""
  results = {}
  step, params = make_step(model, mesh), sharding.replicate(model.params, mesh)
  for set_name, records in model.eval_sets.items():
    key = f"{model.hyper.task}_{set_name}"
    t0 = time.time()
    got = predict(model, step, params, records, mesh, cfg.batch_size, key)
    results[key] = _metrics(model, set_name, records, got, workdir)
    logging.info("evals.%s %s: %s (%.1fs)", name, key,
                 {k: v for k, v in results[key].items() if not isinstance(v, dict)},
                 time.time() - t0)
  return results
