"""The binary end to end: outputs, multi-host equality, and user errors."""

import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import procs
from zoomshot_jax.configs import zeroshot_eval as zeroshot_eval_config
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import results as results_lib
from zoomshot_jax.programs import zeroshot_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "zeroshot_eval.py")


def _launch(workdir, overrides, devices=1, extra_env=None):
  return procs.launch(CONFIG, workdir, overrides, devices, extra_env)


def test_one_process_equals_two_processes(tiny_clip_dir, image_folder, tmp_path):
  common = {"clip": tiny_clip_dir, "evals.zeroshot.datasets": "folder:" + image_folder,
            "evals.zeroshot.batch_size": 4, "evals.zeroshot.save_predictions": True,
            "evals.zeroshot.cache_dir": str(tmp_path / "cache")}
  single = _launch(tmp_path / "single", common, devices=1)
  port = procs.free_port()
  multi = [_launch(tmp_path / "multi", common, devices=2,
                   extra_env=procs.process_env(port, 2, i)) for i in range(2)]
  runs = [procs.wait(p) for p in [single] + multi]
  for rc, out, err in runs:
    assert rc == 0, err[-3000:]
  # 21 images, 4 global devices, batch 4: hosts hold 10 and 11 examples and
  # must agree on 6 steps; every example still counts once.
  results = {name: json.loads((tmp_path / name / "results.json").read_text())
             for name in ("single", "multi")}
  key = "folder:" + image_folder
  assert results["single"][key]["num_examples"] == 21
  assert results["single"] == results["multi"]
  preds = {name: np.load(tmp_path / name / "predictions" / (
      results_lib.predictions_path("", key).split("/")[-1])) for name in ("single", "multi")}
  np.testing.assert_array_equal(preds["single"]["labels"], preds["multi"]["labels"])
  np.testing.assert_allclose(preds["single"]["logits"], preds["multi"]["logits"], atol=1e-4)
  assert preds["single"]["logits"].shape == (21, 3)
  # The table is printed by process 0 only; outputs are all in place.
  assert key in runs[0][1] and key in runs[1][1] and key not in runs[2][1]
  files = os.listdir(tmp_path / "single")
  assert {"config.json", "results.json", "predictions"} <= set(files)
  assert any(f.startswith("events.out.tfevents") for f in files)
  assert not [f for f in files if ".tmp-" in f]
  # Process 1's log says the compilation cache is read-only there (JAX's rule).
  told = "writes entries from process 0 only"
  assert told in (tmp_path / "multi" / "log.process1.txt").read_text()
  assert told not in (tmp_path / "multi" / "log.txt").read_text()
  saved = json.loads((tmp_path / "single" / "config.json").read_text())
  assert saved["clip"] == tiny_clip_dir and saved["evals"]["zeroshot"]["batch_size"] == 4


def test_user_errors_exit_cleanly(tiny_clip_dir, tmp_path):
  cases = {
      "unknown_dataset": ({"clip": tiny_clip_dir,
                           "evals.zeroshot.datasets": "no_such_dataset_xyz"},
                          "not a tfds dataset"),
      "missing_clip": ({"clip": str(tmp_path / "nope")}, "no model config found"),
      "unknown_field": ({"batchsize": 8}, "batchsize"),
  }
  running = {name: _launch(tmp_path / name, overrides)
             for name, (overrides, _) in cases.items()}
  for name, proc in running.items():
    rc, out, err = procs.wait(proc)
    assert rc == 2, (name, err[-2000:])
    assert cases[name][1] in err, (name, err[-2000:])
    assert "Traceback" not in err, (name, err[-2000:])
    assert not (tmp_path / name / "results.json").exists()


def _config(clip_dir, datasets=None, tmp_path=None, **overrides):
  config = zeroshot_eval_config.get_config()
  config.clip = clip_dir
  fields = dict(datasets=datasets, batch_size=8, cache_dir=str(tmp_path / "cache"))
  fields.update(overrides)
  for top in ("mesh", "dtype", "data_dir"):  # fields of the program, not of the evaluator
    if top in fields:
      config[top] = fields.pop(top)
  config.evals.zeroshot.update(fields)
  return ml_collections.FrozenConfigDict(config)


def test_mock_tfds_datasets_through_the_program(tiny_clip_dir, tmp_path):
  templates = tmp_path / "templates.txt"
  templates.write_text("a photo of a {}.\n")
  config = _config(tiny_clip_dir, "imagenet2012,cifar10", tmp_path, templates_file=str(templates),
                   data_dir=str(tmp_path / "tfds"))
  with tfds.testing.mock_data(num_examples=11):
    results = zeroshot_eval.run(config, str(tmp_path / "work"))
  assert set(results) == {"imagenet2012", "cifar10"}
  assert all(r["num_examples"] == 11 for r in results.values())
  assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in results.values())
  assert json.loads((tmp_path / "work" / "results.json").read_text()) == results


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 12}, r"batch_size=12 must be a positive multiple of the number of devices in the mesh \(8\)"),
    ({"datasets": " , "}, "config.evals.zeroshot.datasets is empty"),
    ({"type": "vqa"}, r"config.evals.zeroshot.type='vqa': expected one of"),
    ({"mesh": [("data", 3)]}, r"needs 3 devices, but 8 are available"),
    ({"dtype": "float64"}, "dtype 'float64' is not one of"),
])
def test_program_rejects_bad_config(tiny_clip_dir, image_folder, tmp_path, overrides, message):
  overrides = {"datasets": "folder:" + image_folder, **overrides}
  config = _config(tiny_clip_dir, tmp_path=tmp_path, **overrides)
  with pytest.raises(UserError, match=message):
    zeroshot_eval.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work" / "results.json").exists()


def test_classnames_file_is_checked_against_the_labels(tiny_clip_dir, image_folder, tmp_path):
  names = tmp_path / "names.txt"
  names.write_text("cat\ndog\n")
  config = _config(tiny_clip_dir, "folder:" + image_folder, tmp_path, classnames_file=str(names))
  with pytest.raises(UserError, match="has 3 classes but 2 class names"):
    zeroshot_eval.run(config, str(tmp_path / "work"))
  config = _config(tiny_clip_dir, "folder:" + image_folder + ",cifar10", tmp_path,
                   classnames_file=str(names))
  with pytest.raises(UserError, match="applies to one dataset"):
    zeroshot_eval.run(config, str(tmp_path / "work"))
