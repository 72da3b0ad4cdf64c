"""The VL fine-tuning program on the demo world's files: each task end to end,
the official VQA results file, predictions recomputed without the pipeline,
exact resume, and bad input refused before anything trains."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from tests import procs
from zoomshot_jax.configs import vl_finetune as vl_config
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import vl_tasks
from zoomshot_jax.programs import vl_finetune as program
from zoomshot_jax.vl import pipeline, readers, vqa_eval

# VCR's 8 val examples in batches of 16 on 8 devices: one padded batch.
OVERRIDES = {"vqa": {}, "snli_ve": {}, "vcr": {"evals.vl.batch_size": 16}}



def _config(task, /, **overrides):
  c = vl_config.get_config(f"{task},world,tiny")
  c.update_from_flattened_dict({**OVERRIDES[task], **overrides})
  return c


_RUNS = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """run(task) -> (workdir, the program's output), each task run once."""
  def run(task):
    if task not in _RUNS:
      workdir = str(tmp_path_factory.mktemp(f"vl_{task}"))
      _RUNS[task] = workdir, program.run(_config(task), workdir)
    return _RUNS[task]
  yield run
  _RUNS.clear()


def _val_files(workdir, task):
  return program.task_files(task, os.path.join(workdir, "data", "clean", task), "val")


def test_vqa_end_to_end_and_the_official_results_file(runs):
  workdir, out = runs("vqa")
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results == json.loads(json.dumps(out["results"]))
  r = results["vqa_val2014"]
  files = _val_files(workdir, "vqa")
  annotations = json.load(open(files["annotations"]))["annotations"]
  assert r["num_examples"] == len(annotations)
  assert set(r["per_answer_type"]) == {a["answer_type"] for a in annotations}
  # The official results format, one answer per val question, from the vocabulary.
  preds = json.load(open(os.path.join(workdir, "predictions", "vqa_val2014.json")))
  assert all(set(p) == {"question_id", "answer"} for p in preds)
  assert sorted(p["question_id"] for p in preds) == sorted(a["question_id"] for a in annotations)
  assert {p["answer"] for p in preds} <= set(out["answers"])
  # Scoring the file alone (against the annotations file) gives results.json.
  alone = vqa_eval.score_predictions(os.path.join(workdir, "predictions", "vqa_val2014.json"),
                                     files["annotations"], files["questions"])
  assert alone["overall"] == pytest.approx(r["overall"], abs=1e-9)
  assert alone["per_answer_type"] == pytest.approx(r["per_answer_type"], abs=1e-9)
  # The vocabulary is the training split's, kept beside the checkpoints.
  saved = json.load(open(os.path.join(workdir, "answers.json")))["answers"]
  train = json.load(open(program.task_files("vqa", os.path.join(workdir, "data", "clean", "vqa"),
                                            "train")["annotations"]))["annotations"]
  assert saved == out["answers"] == vqa_eval.build_answer_vocab(train, 1)
  assert json.load(open(os.path.join(workdir, "config.json")))["task"] == "vqa"


def test_snli_ve_end_to_end(runs):
  workdir, out = runs("snli_ve")
  r = json.load(open(os.path.join(workdir, "results.json")))["snli_ve_dev"]
  n = len(readers.read_snli_ve(**_val_files(workdir, "snli_ve")))
  assert r["num_examples"] == n == 3 * vl_config.get_config("tiny").world.val
  assert 0 <= r["accuracy"] <= 100 and round(r["accuracy"] * n / 100, 6) % 1 == 0
  assert out["answers"] is None and not os.path.exists(os.path.join(workdir, "answers.json"))


def _predict_directly(workdir, task, params, records):
  """Argmax choices of the trained params on every record, one unsharded
  batch, decoded and tokenised here (no tf.data, no padding, no gather)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  c = _config(task)
  tok = pipeline.load_tokenizer(os.path.join(workdir, "data", "tokenizer"))
  module, _, hyper = program.build_model(c, tok, 0)
  images = np.stack([tf.io.decode_jpeg(tf.io.read_file(r.image_path), channels=3).numpy()
                     for r in records])
  assert images.shape[1:] == (32, 32, 3)       # written at the student's side: no resize
  image = (images.astype(np.float32) / 255 - 0.5) / 0.5
  forward = jax.jit(lambda p, b: vl_tasks.forward(module, hyper, p, b)[0])
  got = {}
  for mode in vl_tasks.VCR_MODES:
    pairs = [p for r in records for p in vl_tasks.vcr_example_pairs(r, mode)]
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding="max_length",
              truncation=True, max_length=c.data.max_length, return_token_type_ids=True,
              return_tensors="np")
    batch = {k: np.asarray(enc[k]).reshape(len(records), 4, -1) for k in pipeline.TEXT_KEYS}
    logits = forward(params, {**batch, "image": image})
    got[mode] = np.argmax(np.asarray(logits), -1)
  return got


def test_vcr_end_to_end_matches_predictions_made_without_the_pipeline(runs):
  workdir, out = runs("vcr")
  r = json.load(open(os.path.join(workdir, "results.json")))["vcr_val"]
  records = readers.read_vcr(**_val_files(workdir, "vcr"))
  assert r["num_examples"] == len(records) == 8     # 8 of the batch of 16 are padding
  got = _predict_directly(workdir, "vcr", out["params"], records)
  a = got["q2a"] == [x.answer_label for x in records]
  b = got["qa2r"] == [x.rationale_label for x in records]
  assert r["q2a"] == pytest.approx(100 * a.mean())
  assert r["qa2r"] == pytest.approx(100 * b.mean())
  assert r["q2ar"] == pytest.approx(100 * (a & b).mean())


class _Crash(Exception):
  pass


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(runs, tmp_path):
  """Checkpoints every 2 of 4 steps; killed after step 3, the rerun resumes
  from step 2 and ends with the uninterrupted run's parameters, bit for bit."""
  _, straight = runs("vqa")

  def crash(done):
    if done == 3:
      raise _Crash()

  with pytest.raises(_Crash):
    program.run(_config("vqa"), str(tmp_path), hooks=[crash])
  assert max(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == 2
  assert not os.path.exists(tmp_path / "results.json")
  assert not os.path.exists(tmp_path / "predictions")      # nothing half-written
  seen = []
  resumed = program.run(_config("vqa"), str(tmp_path), hooks=[seen.append])
  assert seen == [3, 4]                                     # resumed, not restarted
  for x, y in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"]),
                  strict=True):
    np.testing.assert_array_equal(x, y)
  assert resumed["results"] == straight["results"]


def _snapshot(workdir):
  return {os.path.relpath(os.path.join(d, f), workdir): os.path.getmtime(os.path.join(d, f))
          for d, _, files in os.walk(workdir) for f in files}


def test_another_answer_vocabulary_is_refused_on_resume(runs, tmp_path):
  workdir, _ = runs("vqa")
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  before = _snapshot(copy)
  with pytest.raises(UserError, match=r"answers.json holds another answer vocabulary"):
    program.run(_config("vqa", **{"data.answer_min_count": 3}), copy)
  assert _snapshot(copy) == before                        # nothing written
  # The binary says so in one line, exit status 2.
  code, _, err = procs.wait(procs.launch(
      os.path.join(procs.ROOT, "configs", "vl_finetune.py") + ":vqa,world,tiny", copy,
      {"data.answer_min_count": 3}))
  assert code == 2, err[-2000:]
  lines = [l for l in err.splitlines() if l.startswith("zoomshot_jax: error:")]
  assert len(lines) == 1 and "another answer vocabulary" in lines[0], err[-2000:]
  assert "Traceback" not in err


def test_unknown_regime_or_task_is_refused_before_anything_runs(tmp_path):
  with pytest.raises(ValueError, match=r"'low3' is not a variant word.*regime: full \| low0.1"):
    vl_config.get_config("vqa,low3")
  for field, value, message in [("regime", "medium", "config.regime='medium'"),
                                ("regime", "low200", "config.regime='low200'"),
                                ("task", "gqa", "config.task='gqa'")]:
    with pytest.raises(UserError, match=re.escape(message)):
      program.run(_config("vqa", **{field: value}), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_missing_images_are_refused_before_training(runs, tmp_path):
  workdir, _ = runs("snli_ve")
  data = str(tmp_path / "data")
  shutil.copytree(os.path.join(workdir, "data"), data)
  image_dir = os.path.join(data, "clean", "snli_ve", "flickr30k_images")
  os.remove(os.path.join(image_dir, sorted(os.listdir(image_dir))[0]))
  with pytest.raises(UserError, match=r"1 of \d+ Flickr30k images .* are missing"):
    program.run(_config("snli_ve", **{"data.dir": data}), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_low_shot_runs_train_at_least_min_steps():
  c = vl_config.get_config("vqa,world,low1")
  assert program.total_steps(c, 130) == c.train.min_steps == 200     # 10 epochs: 21 steps
  assert program.total_steps(c, 13_000) == -(-10 * 13_000 // 64)      # epochs win
  c.train.steps = 7
  assert program.total_steps(c, 130) == 7                             # steps override both
