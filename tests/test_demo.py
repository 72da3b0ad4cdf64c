"""The demo chain on the micro world: every stage, through the real binary.

The micro world has a few hundred images and the models train for a few
steps, so the accuracies mean nothing; these tests check the machinery: the
artifacts exist and load through the encoder registry, the results are
well-formed, a repeated run reuses the models, and bad input fails cleanly.
"""

import json
import os

import numpy as np
import pytest

from tests import procs
from zoomshot_jax import encoders, world
from zoomshot_jax.demo import report
from zoomshot_jax.demo.__main__ import DEFAULT_CONFIG, with_default_config

MICRO = "configs/demo.py:micro"
ROWS = ("clip", "text_to_concept", "zoomshot", "asif")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """Two runs of `python -m zoomshot_jax.demo` into one workdir (the second
  must reuse the world and the trained models)."""
  workdir = str(tmp_path_factory.mktemp("demo"))
  runs = []
  for _ in range(2):
    proc = procs.launch(MICRO, workdir, {}, devices=2, module="zoomshot_jax.demo")
    runs.append(procs.wait(proc, timeout=600))
  return workdir, runs


def test_demo_runs_every_stage_and_writes_results(demo_run):
  workdir, runs = demo_run
  code, out, err = runs[0]
  assert code == 0, err[-3000:]
  summary = json.load(open(os.path.join(workdir, "results.json")))
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
  # The printed table is the one the report module makes from results.json.
  assert report.table(summary).splitlines()[0] in out
  for label, _, _ in report.rows(summary):
    assert label in out
  png = open(os.path.join(workdir, "results.png"), "rb").read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
  assert not [f for f in os.listdir(workdir) if ".tmp" in f]  # no half-written outputs


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
  summary = json.load(open(os.path.join(workdir, "results.json")))  # the second run's
  assert report.table(summary).split("\nTime:")[0] in out
  for stage in ("world", "train clip", "train vision", "maps: zoomshot", "asif",
                "synthetic images", "distill: l2", "distill: contrastive"):
    assert f"\n{stage}: done in " in "\n" + out, stage
  assert f"Log: {os.path.join(workdir, 'log.txt')}" in out
  assert f"Results: {os.path.join(workdir, 'results.json')}" in out
  assert "Traceback" not in err and "orbax" not in (out + err).lower()
  log = _log_of_run(workdir, 0)
  assert "orbax" in log.lower() and "checkpoint_manager.py" in log  # Orbax internals
  assert "] Config:" in log and "ETA" in log                        # our INFO and progress
  assert "oneDNN" in log and "oneDNN" not in err                   # TensorFlow's C++ banner
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
  first = runs[0][1].split("Zero-shot")[1].split("Time:")[0]
  second = out.split("Zero-shot")[1].split("Time:")[0]
  assert first == second  # the same table


def test_default_config_is_the_packaged_demo_config():
  assert os.path.exists(DEFAULT_CONFIG)
  assert with_default_config(["demo", "--workdir=x"]) == [
      "demo", f"--config={DEFAULT_CONFIG}", "--workdir=x"]
  argv = ["demo", "--config=configs/demo.py:micro", "--workdir=x"]
  assert with_default_config(argv) == argv


@pytest.mark.parametrize("field,value", [("world.renderer", "sepia"), ("world.scale", "huge"),
                                         ("clip.init", "orthogonal")])
def test_bad_demo_input_is_one_line(tmp_path, field, value):
  proc = procs.launch(MICRO, str(tmp_path), {field: value}, module="zoomshot_jax.demo")
  code, _, err = procs.wait(proc)
  assert code == 2
  assert value in err and "Traceback" not in err
  assert not os.path.exists(os.path.join(tmp_path, "results.json"))
