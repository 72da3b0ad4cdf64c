"""The demo chain on the micro world: every stage, through the real binary.

The micro world has a few hundred images and the models train for a few
steps, so the accuracies mean nothing; these tests check the machinery: the
artifacts exist and load through the encoder registry, the results are
well-formed, a repeated run reuses the models, and bad input fails cleanly.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest

from tests import procs
from zoomshot_jax import encoders, world
from zoomshot_jax.configs import demo as demo_config
from zoomshot_jax.configs import vl_finetune as vl_config
from zoomshot_jax.demo import report, vl_rows
from zoomshot_jax.demo import run as demo_lib
from zoomshot_jax.errors import UserError
from zoomshot_jax.demo.__main__ import DEFAULT_CONFIG, with_default_config
from zoomshot_jax.programs import vl_finetune

MICRO = "configs/demo.py:micro"
ROWS = ("clip", "text_to_concept", "zoomshot", "asif")


# The first run fine-tunes the VL student on VCR only: each task costs 30-40 s
# here (two trainings, mostly compiling), the tasks share the demo's code
# path, and VCR takes its richest branch (4-way candidates, two metrics and
# their product). VQA and SNLI-VE run end to end through the same program in
# test_vl_finetune.py and test_clip_td.py, and their text-only references
# are checked below (test_text_only_references_of_every_task).
FIRST_RUN = {"vl.tasks": "('vcr',)"}
# The second run repeats only what depends on the reused world and models.
# The distillation and VL rows are reused on a rerun too (the distillation
# export; each VL run resumes at its last checkpoint), but loading and
# evaluating them again checks nothing this test needs.
REPEAT = {"distill.losses": "()", "vl.tasks": "()"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """Two runs of `python -m zoomshot_jax.demo` into one workdir (the second
  must reuse the world and the trained models); results.json of the first is
  kept as first_results.json."""
  workdir = str(tmp_path_factory.mktemp("demo"))
  runs = []
  for overrides in (FIRST_RUN, REPEAT):
    proc = procs.launch(MICRO, workdir, overrides, devices=2, module="zoomshot_jax.demo")
    runs.append(procs.wait(proc, timeout=600))
    if overrides is FIRST_RUN and os.path.exists(os.path.join(workdir, "results.json")):
      shutil.copy(os.path.join(workdir, "results.json"),
                  os.path.join(workdir, "first_results.json"))
  return workdir, runs


def _results(workdir, run):
  return json.load(open(os.path.join(workdir, ("first_results.json", "results.json")[run])))


def test_demo_runs_every_stage_and_writes_results(demo_run):
  workdir, runs = demo_run
  code, out, err = runs[0]
  assert code == 0, err[-3000:]
  summary = _results(workdir, 0)
  n_test = world.SPLIT_SIZES["micro"]["test"]
  assert summary["num_classes"] == 64
  assert summary["chance"]["top1"] == pytest.approx(100 / 64)
  for row in ROWS:
    r = summary["results"][row]
    assert 0 <= r["top1"] <= r["top5"] <= 100, (row, r)
    assert r["num_examples"] == n_test, row
  for method in ("text_to_concept", "zoomshot"):
    held = summary["results"][method]["heldout"]
    assert np.isfinite(held["r2"]) and 0 <= held["agreement"] <= 1
  d = summary["distillation"]
  assert d["student"] == "world_resnet" and d["params"]["ratio"] <= 0.25
  for row in ("l2", "contrastive"):
    for renderer in ("clean", "photo"):
      r = d["rows"][row][renderer]
      assert r["num_examples"] == n_test and 0 <= r["top1"] <= r["top5"] <= 100, (row, r)
  assert d["images"] == 64 * 20       # 20 pairwise prompts per class, one image each
  assert report.distill_table(summary) in out
  _check_vl_rows(summary, out)
  # The printed table is the one the report module makes from results.json.
  assert report.table(summary).splitlines()[0] in out
  for label, _, _ in report.rows(summary):
    assert label in out
  png = open(os.path.join(workdir, "results.png"), "rb").read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
  assert not [f for f in os.listdir(workdir) if ".tmp" in f]  # no half-written outputs


def _check_vl_rows(summary, out):
  """The VL rows: the micro demo's 1% of 16 world VCR images (one example),
  scored on the 8 val images, keys as vl_finetune's evaluator gives them."""
  v = summary["vl"]
  assert (v["regime"], v["seed"], v["tasks"]) == ("low1", 0, ["vcr"])
  assert v["methods"] == [["baseline", "VL student, no CLIP"],
                          ["clip_td", "VL student + CLIP-TD"]] and v["student"] == "world_tiny"
  want = {"q2a", "qa2r", "q2ar", "num_examples"}
  val = vl_config.get_config("tiny").world.val
  assert set(v["rows"]) == {"vcr"} and set(v["rows"]["vcr"]) == {"baseline", "clip_td"}
  for method, r in v["rows"]["vcr"].items():    # CLIP-TD ran VCR's 4-way path too
    assert set(r) == want and all(0 <= r[k] <= 100 for k in want - {"num_examples"}), (method, r)
    assert r["num_examples"] == val
    # Q->AR needs both answers right, so it is at most either.
    assert r["q2ar"] <= min(r["q2a"], r["qa2r"]), (method, r)
  assert v["train_examples"] == {"vcr": 1}        # round(1% of the split), at least one
  assert v["references"] == {"vcr": {"q2a": 25.0, "qa2r": 25.0, "q2ar": 6.25}}
  table = report.vl_table(summary)
  assert table and table in out and "1% of the world's training examples" in table
  bars = [b[0] for b in report.vl_bars(summary)]
  assert bars == ["VL student, no CLIP, VCR Q→AR, 1% [val]",
                  "VL student + CLIP-TD, VCR Q→AR, 1% [val]"], bars


def test_text_only_references_of_every_task(tmp_path):
  """The demo's text-only column on the micro world's files, for each task:
  the training subset's most common answer (VQA: scored by the official
  metric) or label (SNLI-VE: each val image has one hypothesis per label),
  and VCR's chance; the run's 1% of 16 images is one example."""
  config = demo_config.get_config("micro")
  data_dir = str(tmp_path / "vl")
  refs = {}
  for task in ("vqa", "snli_ve", "vcr"):
    c = vl_rows.task_config(config, task, data_dir)
    vl_finetune.write_world(c, data_dir, "clean", [c.data.train_split, c.data.eval_split])
    n, refs[task] = vl_rows.text_only(c)
    assert n == 1, task
  vqa = refs["vqa"]
  assert set(vqa) == {"overall", "per_answer_type", "answer"}
  assert set(vqa["per_answer_type"]) <= {"yes/no", "number", "other"}
  # The answer is a training answer, scored over val by VQA's rule in NumPy:
  # min(humans who gave it among the other 9 / 3, 1), averaged over the 10.
  c = vl_rows.task_config(config, "vqa", data_dir)
  folder = os.path.join(data_dir, "clean", "vqa")
  annotations = {split: json.load(open(vl_finetune.task_files("vqa", folder, split)[
      "annotations"]))["annotations"] for split in (c.data.train_split, c.data.eval_split)}
  assert vqa["answer"] in {a["multiple_choice_answer"] for a in annotations[c.data.train_split]}
  accuracy = [np.mean([min(sum(h == vqa["answer"] for h in humans[:i] + humans[i + 1:]) / 3, 1)
                       for i in range(len(humans))])
              for humans in ([h["answer"] for h in a["answers"]]
                             for a in annotations[c.data.eval_split])]
  assert vqa["overall"] == pytest.approx(100 * np.mean(accuracy))
  assert refs["snli_ve"] == {"accuracy": pytest.approx(100 / 3)}
  assert refs["vcr"] == {"q2a": 25.0, "qa2r": 25.0, "q2ar": 6.25}


def test_vl_table_has_a_column_per_method():
  """CLIP-TD's rows are one more [key, label] in results.json's "vl"."""
  m = {"overall": 10.0, "per_answer_type": {"yes/no": 20.0, "other": 5.0}, "num_examples": 40}
  summary = {"vl": {"regime": "low0.1", "seed": 3, "tasks": ["vqa", "vcr"], "student": "s",
                    "methods": [["baseline", "no CLIP"], ["clip_td", "with CLIP-TD"]],
                    "rows": {"vqa": {"baseline": m, "clip_td": {**m, "overall": 12.5}},
                             "vcr": {k: {"q2a": 50.0, "qa2r": 40.0, "q2ar": 25.0,
                                         "num_examples": 9} for k in ("baseline", "clip_td")}},
                    "train_examples": {"vqa": 4, "vcr": 2},
                    "references": {"vqa": {**m, "overall": 7.0, "answer": "yes"},
                                   "vcr": {"q2a": 25.0, "qa2r": 25.0, "q2ar": 6.25}}}}
  lines = report.vl_table(summary).splitlines()
  assert "0.1% of the world's training examples (low0.1" in lines[0] and "(3)" in lines[0]
  assert "no CLIP" in lines[1] and "with CLIP-TD" in lines[1]
  assert lines[2].split() == ["VQA,", "accuracy", "4", "40", "10.00", "12.50", "7.00"]
  assert lines[3].split() == ["other", "5.00", "5.00", "5.00"]
  assert lines[-2].split()[-3:] == ["25.00", "25.00", "6.25"]
  assert [b[0] for b in report.vl_bars(summary)][-1] == "with CLIP-TD, VCR Q→AR, 0.1% [val]"


@pytest.mark.parametrize("field,value,message", [
    ("tasks", ("vqa", "gqa"), "config.vl.tasks=('vqa', 'gqa'): expected distinct tasks"),
    ("tasks", ("vqa,vcr",), "a tuple: --config.vl.tasks="),
    ("tasks", ("vcr", "vcr"), "expected distinct tasks"),
    ("regime", "shift", "config.vl.regime='shift': expected one of ['full', 'low0.1'"),
    ("methods", ("baseline", "fancy"), "config.vl.methods=('baseline', 'fancy'): expected"),
])
def test_bad_vl_config_is_refused_before_anything_runs(field, value, message):
  config = demo_config.get_config("micro")
  config.vl[field] = value
  with pytest.raises(UserError, match=re.escape(message)):
    vl_rows.check(config)


def _log_of_run(workdir, i):
  """The part of log.txt that run i (0 or 1) appended."""
  log = open(os.path.join(workdir, "log.txt")).read()
  runs = ("\n" + log).split("\n==== ")  # each run starts with a "==== <time> <argv>" line
  assert len(runs) == 3, log[:2000]
  return runs[1 + i]


def test_demo_console_is_short_and_the_chatter_is_in_the_log(demo_run):
  workdir, runs = demo_run
  code, out, err = runs[0]
  assert code == 0, err[-3000:]
  lines = (out + err).splitlines()
  assert len(lines) <= 60, "\n".join(lines)
  assert report.table(_results(workdir, 0)).split("\nTime:")[0] in out
  for stage in ("world", "train clip", "train vision", "maps: zoomshot", "asif",
                "synthetic images", "distill: l2", "distill: contrastive", "vl: vcr"):
    assert f"\n{stage}: done in " in "\n" + out, stage
  assert f"Log: {os.path.join(workdir, 'log.txt')}" in out
  assert f"Results: {os.path.join(workdir, 'results.json')}" in out
  assert "Traceback" not in err and "orbax" not in (out + err).lower()
  log = _log_of_run(workdir, 0)
  assert "orbax" in log.lower() and "checkpoint_manager.py" in log  # Orbax internals
  assert "] Config:" in log and "ETA" in log                        # our INFO and progress
  # TensorFlow's C++ banner: printed on Intel CPUs only (oneDNN is off by
  # default elsewhere), so its routing is tested in test_console; here only
  # that it never reaches the terminal.
  assert "oneDNN" not in err
  assert "Transformers v5" in log and "Transformers v5" not in err  # transformers' notice


def test_demo_models_load_through_the_registry(demo_run):
  workdir, _ = demo_run
  summary = json.load(open(os.path.join(workdir, "results.json")))
  clip = encoders.load_clip(summary["models"]["clip"])
  vision = encoders.load_vision_encoder("resnet", summary["models"]["vision"], "pooler")
  # The word-level tokenizer: world words are single tokens, EOS the highest id.
  ids = clip.tokenize(["a small red triangle"])["input_ids"][0]
  assert len(ids) == 6 and ids[-1] == clip.tokenizer.vocab_size - 1
  assert clip.preprocess.image_size == vision.preprocess.image_size == 48
  images = np.zeros((2, 48, 48, 3), np.uint8)
  assert clip.image_features(clip.params, images).shape == (2, clip.dim)
  assert vision.image_features(vision.variables, images).shape == (2, vision.dim)


def test_repeated_demo_reuses_world_and_models(demo_run):
  workdir, runs = demo_run
  code, out, err = runs[1]
  assert code == 0, err[-3000:]
  log = _log_of_run(workdir, 1)
  assert "Using the trained clip" in log and "Using the trained vision" in log
  assert "train clip" not in out and "train vision" not in out  # no training stage
  # The same zero-shot table (the second run has no distillation or VL rows:
  # REPEAT), and the results.json it wrote has it too.
  first = runs[0][1].split("Zero-shot")[1].split("Feature distillation")[0]
  second = out.split("Zero-shot")[1].split("Models:")[0]
  assert first == second
  assert _results(workdir, 1)["results"] == _results(workdir, 0)["results"]
  assert "distill: l2" not in out and "vl: vcr" not in out


def test_default_config_is_the_packaged_demo_config():
  assert os.path.exists(DEFAULT_CONFIG)
  assert with_default_config(["demo", "--workdir=x"]) == [
      "demo", f"--config={DEFAULT_CONFIG}", "--workdir=x"]
  argv = ["demo", "--config=configs/demo.py:micro", "--workdir=x"]
  assert with_default_config(argv) == argv


def test_bad_demo_input_is_one_line(tmp_path):
  proc = procs.launch(MICRO, str(tmp_path), {"world.renderer": "sepia"},
                      module="zoomshot_jax.demo")
  code, _, err = procs.wait(proc)
  assert code == 2
  assert "sepia" in err and "Traceback" not in err
  assert not os.path.exists(os.path.join(tmp_path, "results.json"))


@pytest.mark.parametrize("field,value", [("world.scale", "huge"), ("clip.init", "orthogonal"),
                                         ("vl.tasks", ("gqa",))])
def test_bad_demo_settings_are_refused_before_anything_is_written(tmp_path, field, value):
  config = demo_config.get_config("micro")
  config.update_from_flattened_dict({field: value})
  with pytest.raises(UserError, match=re.escape(f"config.{field}=")):
    demo_lib.run(config, str(tmp_path))
  assert os.listdir(tmp_path) == []
