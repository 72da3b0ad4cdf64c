"""The zoomshot program: stages, cache, checkpoints, export, errors, hosts."""

import glob
import json
import os
import shutil

import numpy as np
import procs
import pytest
import tensorflow_datasets as tfds

from zoomshot_jax import api
from zoomshot_jax.configs import zoomshot as zoomshot_config
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import artifact
from zoomshot_jax.programs import zoomshot as program
from zoomshot_jax.tools import toy_assets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """3 classes x 30 images: 63 for training (0.7), 16 held out."""
  return toy_assets.write_image_folder(str(tmp_path_factory.mktemp("zs_images")),
                                       per_class=30, seed=0)


def _config(clip_dir, vision_dir, folder, cache_dir, **overrides):
  c = zoomshot_config.get_config()
  c.clip = clip_dir
  c.vision.name, c.vision.checkpoint, c.vision.pooling = "vit", vision_dir, "cls"
  c.data.update(dataset="folder:" + folder, train_fraction=0.7, heldout_examples=16)
  c.features.update(batch_size=16, shard_size=24, cache_dir=cache_dir)
  c.train.update(batch_size=16, epochs=2, log_every=2, eval_every=4, checkpoint_every=2)
  c.evals.zeroshot.update(datasets="folder:" + folder, batch_size=16, cache_dir="none")
  c.zoomshot.prompts.cache_dir = "none"
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope="module")
def cfg(tiny_clip_dir, tiny_vision_dirs, folder, tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("zs_cache"))
  return lambda cache_dir=cache, **kw: _config(tiny_clip_dir, tiny_vision_dirs["vit"], folder,
                                               cache_dir, **kw)


@pytest.fixture(scope="module")
def full_run(cfg, tmp_path_factory):
  """All stages once; later tests reuse its feature cache."""
  workdir = str(tmp_path_factory.mktemp("zs_full"))
  out = program.run(cfg(), workdir)
  return workdir, out


def _mapping(workdir):
  maps, meta = artifact.load(os.path.join(workdir, "export", "mapping.npz"))
  return maps, meta


def test_all_stages_write_complete_outputs(full_run, cfg, folder):
  workdir, out = full_run
  files = set(os.listdir(workdir))
  assert {"config.json", "results.json", "export", "checkpoints"} <= files
  assert any(f.startswith("events.out.tfevents") for f in files)
  assert not glob.glob(os.path.join(workdir, "**", ".*.tmp-*"), recursive=True)
  results = json.loads(open(os.path.join(workdir, "results.json")).read())
  key = "folder:" + folder
  assert set(results) == {"zoomshot", "clip"}
  for who in results:
    assert results[who][key]["num_examples"] == 90
    assert 0 <= results[who][key]["top1"] <= 100
  # 63 training images in batches of 16: 3 steps per epoch, 2 epochs.
  maps, meta = _mapping(workdir)
  assert meta["train"]["steps"] == 6 and meta["method"] == "zoomshot"
  assert maps["h"]["kernel"].shape == (32, 16) and maps["g"]["kernel"].shape == (16, 32)
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                if s.isdigit())[-1] == 6
  manifest = json.loads(open(os.path.join(cfg().features.cache_dir, "train",
                                          "manifest.json")).read())
  assert manifest["complete"] and manifest["num_examples"] == 63
  assert manifest["encoders"]["vision"]["dim"] == 32


def test_api_classifies_with_the_exported_map(full_run, folder):
  workdir, out = full_run
  clf = api.load_mapped(os.path.join(workdir, "export", "mapping.npz"))
  images = sorted(glob.glob(os.path.join(folder, "*", "*.png")))[:4]
  probs = clf.classify(images, ["red square", "green circle", "blue triangle"])
  assert probs.shape == (4, 3)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  # The same numbers by hand: h(V(x)) on raw features, then CLIP's classifier.
  maps, _ = _mapping(workdir)
  vision = clf._variables["vision"]  # pylint: disable=protected-access
  from zoomshot_jax import encoders
  enc = encoders.load_vision_encoder("vit", out["export"]["vision"]["checkpoint"], "cls")
  feats = np.asarray(enc.image_features(vision, clf.preprocess(images)), np.float64)
  z = feats @ maps["h"]["kernel"] + maps["h"]["bias"]
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  w = clf._classifier(("red square", "green circle", "blue triangle"), ("a photo of a {}.",))
  logits = clf.clip.logit_scale * z @ np.asarray(w, np.float64).T
  e = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(probs, e / e.sum(-1, keepdims=True), atol=1e-4)


class _Crash(Exception):
  pass


def _crash_at(step):
  def hook(done):
    if done == step:
      raise _Crash()
  return hook


@pytest.mark.parametrize("features", ["cached", "online"])
def test_killed_run_resumes_to_the_same_result(full_run, cfg, tmp_path, features):
  kw = {"stages": "train", "features.mode": features, "features.augment": features == "online",
        "train.epochs": 3}
  straight = str(tmp_path / "straight")
  program.run(cfg(**kw), straight)
  resumed = str(tmp_path / "resumed")
  with pytest.raises(_Crash):
    program.run(cfg(**kw), resumed, hooks=[_crash_at(5)])
  steps_seen = []
  program.run(cfg(**kw), resumed, hooks=[steps_seen.append])
  assert steps_seen[0] == 5   # restarted after the step-4 checkpoint, not from 0
  (a, meta_a), (b, meta_b) = _mapping(straight), _mapping(resumed)
  for name in a:
    for leaf in a[name]:
      np.testing.assert_array_equal(a[name][leaf], b[name][leaf])
  assert meta_a["heldout"] == meta_b["heldout"]


def test_extraction_resumes_at_the_missing_shard(full_run, cfg, tmp_path):
  cache = str(tmp_path / "cache")
  shutil.copytree(cfg().features.cache_dir, cache)
  train_dir = os.path.join(cache, "train")
  shards = sorted(f for f in os.listdir(train_dir) if f.startswith("shard-"))
  assert len(shards) == 3    # 63 examples in shards of 24
  before = {f: np.load(os.path.join(train_dir, f)) for f in shards}
  mtimes = {f: os.stat(os.path.join(train_dir, f)).st_mtime_ns for f in shards}
  os.remove(os.path.join(train_dir, shards[1]))
  manifest_path = os.path.join(train_dir, "manifest.json")
  manifest = json.loads(open(manifest_path).read())
  manifest["complete"] = False   # as a run stopped mid-extraction leaves it
  open(manifest_path, "w").write(json.dumps(manifest))
  with pytest.raises(UserError, match="incomplete"):
    program.run(cfg(cache_dir=cache, stages="train"), str(tmp_path / "w"))
  program.run(cfg(cache_dir=cache, stages="extract"), str(tmp_path / "w"))
  for f in shards:
    after = np.load(os.path.join(train_dir, f))
    for key in ("vision", "clip"):
      np.testing.assert_allclose(after[key], before[f][key], atol=1e-3)
  assert os.stat(os.path.join(train_dir, shards[0])).st_mtime_ns == mtimes[shards[0]]
  assert json.loads(open(manifest_path).read())["complete"]


def test_closed_form_text_to_concept(full_run, cfg, tmp_path):
  # No held-out images: training still runs, without held-out metrics.
  c = cfg(**{"zoomshot.method": "text_to_concept", "zoomshot.solver": "closed_form",
             "stages": "train,eval", "data.heldout_examples": 0})
  c.zoomshot.loss = {"mse": 1.0}
  out = program.run(c, str(tmp_path))
  maps, meta = _mapping(str(tmp_path))
  assert set(maps) == {"h"} and meta["train"]["solver"] == "closed_form"
  assert meta["heldout"] == {}
  assert set(out["results"]) == {"text_to_concept", "clip"}
  # It is the least-squares map (weight decay 5e-4) on the cached features,
  # folded to raw features: check against NumPy in float64.
  from zoomshot_jax.training import features
  f = features.load(os.path.join(cfg().features.cache_dir, "train"))
  v, c = f["vision"].astype(np.float64), f["clip"].astype(np.float64)
  cv, ci = meta["scales"]["vision"], meta["scales"]["clip"]
  x1 = np.concatenate([v * cv, np.ones((len(v), 1))], 1)
  lam = 5e-4 * len(v) * c.shape[1] / 2
  beta = np.linalg.solve(x1.T @ x1 + lam * np.eye(x1.shape[1]), x1.T @ (c * ci))
  np.testing.assert_allclose(maps["h"]["kernel"], beta[:-1] * cv / ci, rtol=2e-3, atol=1e-4)
  np.testing.assert_allclose(maps["h"]["bias"], beta[-1] / ci, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("overrides, message", [
    ({"zoomshot.paired": False},
     r"--config.zoomshot.loss.mse=0 --config.zoomshot.loss.pgkd_clip=0"),
    ({"zoomshot.method": "text_to_concept"}, r"terms \['cycle_image'"),
    ({"zoomshot.pgkd_mode": "soft"}, r"pgkd_mode='soft'"),
    ({"zoomshot.solver": "closed_form"}, r"Text-to-Concept's exact solver"),
    ({"stages": "extract,fit"}, r"config.stages='extract,fit'"),
    ({"features.mode": "online", "zoomshot.init": "ridge"}, r"needs cached features"),
    ({"evals.zeroshot.type": "vqa"}, r"config.evals.zeroshot.type='vqa'"),
    ({"data.in_memory_gb": -1.0}, r"config.data.in_memory_gb=-1.0: expected a size in GB"),
])
def test_contradictory_configs_are_refused(cfg, tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    program.run(cfg(**overrides), str(tmp_path))
  assert not os.listdir(tmp_path)   # refused before writing anything


def test_cache_of_other_encoders_is_refused(full_run, cfg, tiny_vision_dirs, tmp_path):
  c = cfg(stages="train")
  c.vision.name, c.vision.checkpoint, c.vision.pooling = ("resnet", tiny_vision_dirs["resnet"],
                                                          "pooler")
  with pytest.raises(UserError, match="made by other encoders"):
    program.run(c, str(tmp_path))
  c.stages = "extract"
  with pytest.raises(UserError, match="made with other settings"):
    program.run(c, str(tmp_path))


def test_resume_with_other_dims_is_refused(full_run, cfg, tiny_vision_dirs, tmp_path):
  workdir, _ = full_run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  c = cfg(stages="extract,train", cache_dir=str(tmp_path / "cache"))
  c.vision.name, c.vision.checkpoint, c.vision.pooling = ("resnet", tiny_vision_dirs["resnet"],
                                                          "pooler")
  before = sorted(os.listdir(os.path.join(copy, "checkpoints")))
  with pytest.raises(UserError, match=r"does not fit this config.*h.*kernel"):
    program.run(c, copy)
  assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == before
  # and evaluating the old export with the new encoder is refused too
  c.stages = "eval"
  with pytest.raises(UserError, match="other vision weights"):
    program.run(c, copy)


def test_training_subset_of_a_tfds_split(cfg, tmp_path):
  c = cfg(**{"data.dataset": "imagenet2012", "data.train_fraction": 0.25,
             "data.heldout_examples": 8, "zoomshot.method": "text_to_concept",
             "zoomshot.solver": "closed_form", "stages": "extract,train,eval"},
          cache_dir=str(tmp_path / "cache"))
  c.zoomshot.loss = {"mse": 1.0}
  c.evals.zeroshot.datasets = "imagenet2012"
  c.reference_clip = False
  # One template instead of ImageNet's 80: 1000 prompts through the tiny tower.
  templates = tmp_path / "templates.txt"
  templates.write_text("a photo of a {}.\n")
  c.zoomshot.prompts.templates_file = c.evals.zeroshot.templates_file = str(templates)
  with tfds.testing.mock_data(num_examples=40):
    out = program.run(c, str(tmp_path / "w"))
  manifest = json.loads(open(tmp_path / "cache" / "train" / "manifest.json").read())
  assert manifest["num_examples"] == 10 and manifest["dataset"] == "imagenet2012"
  assert out["results"]["text_to_concept"]["imagenet2012"]["num_examples"] == 40


def test_two_processes_equal_one(cfg, tmp_path, tiny_clip_dir, tiny_vision_dirs, folder):
  base = {"clip": tiny_clip_dir, "vision.name": "vit",
          "vision.checkpoint": tiny_vision_dirs["vit"], "vision.pooling": "cls",
          "data.dataset": "folder:" + folder, "data.train_fraction": 0.7,
          "data.heldout_examples": 16, "train.batch_size": 8, "features.batch_size": 8,
          "features.shard_size": 24, "train.epochs": 1,
          "evals.zeroshot.datasets": "folder:" + folder, "evals.zeroshot.batch_size": 8,
          "evals.zeroshot.cache_dir": "none", "zoomshot.prompts.cache_dir": "none",
          "reference_clip": False, "train.log_every": 2, "train.checkpoint_every": 4}
  config = os.path.join(ROOT, "configs", "zoomshot.py")

  procs.single_and_two_hosts(config, tmp_path, base)
  res = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in ("single", "multi")}
  assert res["single"] == res["multi"]
  (a, _), (b, _) = _mapping(str(tmp_path / "single")), _mapping(str(tmp_path / "multi"))
  for name in a:
    for leaf in a[name]:
      np.testing.assert_allclose(a[name][leaf], b[name][leaf], rtol=1e-4, atol=1e-5)


def test_binary_reports_config_mistakes_in_one_line(tmp_path):
  proc = procs.launch(os.path.join(ROOT, "configs", "zoomshot.py"), tmp_path,
                      {"zoomshot.paired": False})
  rc, _, err = procs.wait(proc)
  assert rc == 2
  lines = [l for l in err.splitlines() if l.startswith("zoomshot_jax: error:")]
  assert len(lines) == 1 and "paired=False" in lines[0] and "Traceback" not in err
