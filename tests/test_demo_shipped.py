"""The demo's shipped models: fingerprints, loading, packaging, and what they know.

They were trained by launch/train_demo_models.py (manifest.json records how);
these tests check that what is installed is what was trained, that it loads
through the encoder registry like any checkpoint, that a wheel carries it,
and that the demo really uses it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests import procs
from zoomshot_jax import encoders
from zoomshot_jax.configs import demo as demo_config
from zoomshot_jax.demo import shipped
from zoomshot_jax.errors import UserError

NAMES = ("clip", "vision_clean", "vision_photo")


def test_manifest_fingerprints_match_and_models_load_through_the_registry():
  info = shipped.manifest()
  assert sorted(info["models"]) == sorted(NAMES)
  assert info["command"].startswith("python launch/train_demo_models.py")
  images = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
  for name in NAMES:
    model_dir = shipped.verify(name)
    assert shipped.fingerprints(model_dir) == info["models"][name]["files"]
    if name == "clip":
      m = encoders.load_clip(model_dir)
      feats = m.image_features(m.params, images)
      assert m.text_features(m.params, **{k: v for k, v in m.tokenize(
          ["a red circle"]).items()}).shape == (1, m.dim)
    else:
      m = encoders.load_vision_encoder("resnet", model_dir, "pooler")
      feats = m.image_features(m.variables, images)
    assert feats.shape == (4, m.dim) and np.isfinite(np.asarray(feats)).all()
  # Each was trained with today's recipe, only longer: a --config.models=retrain
  # run is the same model with fewer steps.
  defaults = demo_config.get_config()
  for name, group in (("clip", "clip"), ("vision_clean", "vision"), ("vision_photo", "vision")):
    recipe = dict(info["models"][name]["recipe"])
    assert recipe.pop("steps") == info["models"][name]["about"]["steps"]
    want = json.loads(json.dumps(defaults[group].to_dict()))   # tuples as JSON lists
    want.pop("steps")
    assert recipe == want, name


def test_a_damaged_or_missing_file_is_refused(tmp_path):
  root = str(tmp_path / "shipped")
  shutil.copytree(shipped.DIR, root)
  shipped.verify("clip", root)                                   # intact: fine
  path = os.path.join(root, "clip", "flax_model.msgpack")
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 1
  open(path, "wb").write(bytes(data))
  with pytest.raises(UserError, match="flax_model.msgpack does not match its sha256"):
    shipped.verify("clip", root)
  os.remove(os.path.join(root, "vision_photo", "config.json"))
  with pytest.raises(UserError, match="config.json is missing"):
    shipped.verify("vision_photo", root)
  with pytest.raises(UserError, match="no shipped demo models"):
    shipped.manifest(str(tmp_path))


def test_a_wheel_carries_the_shipped_models(tmp_path):
  """`pip install .` (not only -e) gets them: setup.py's package_data."""
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(tmp_path), procs.ROOT], check=True, capture_output=True)
  wheel, = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
  names = set(zipfile.ZipFile(os.path.join(tmp_path, wheel)).namelist())
  for name in NAMES:
    for f in shipped.manifest()["models"][name]["files"]:
      assert f"zoomshot_jax/demo/shipped/{name}/{f}" in names
  assert "zoomshot_jax/demo/shipped/manifest.json" in names


def test_demo_with_the_shipped_models_knows_its_world(tmp_path):
  """The micro world is the first examples of the full world's splits, so the
  shipped models apply; their zero-shot accuracy on its 192 unseen test
  images must be far above chance (1.6%) — a broken or untrained checkpoint
  would not be."""
  workdir = str(tmp_path)
  # Without the distillation and VL rows: test_demo.py runs them.
  code, out, err = procs.wait(procs.launch("configs/demo.py:micro", workdir,
                                           {"models": "shipped", "distill.losses": "()",
                                            "vl.tasks": "()"},
                                           module="zoomshot_jax.demo"), timeout=600)
  assert code == 0, err[-3000:]
  summary = json.load(open(os.path.join(workdir, "results.json")))
  assert summary["models"]["source"] == "shipped"
  assert summary["models"]["clip"] == os.path.join(shipped.DIR, "clip")
  assert "train clip" not in out and "Models: shipped with the package" in out
  r = summary["results"]
  assert r["clip"]["top1"] >= 50, r
  assert r["text_to_concept"]["top1"] >= 25 and r["asif"]["top1"] >= 25, r


@pytest.mark.parametrize("field,value,message", [
    ("models", "pretrained", "config.models='pretrained': expected one of"),
    ("world.seed", 3, "config.world.seed=3: the shipped demo models"),
    ("clip.steps", 50, "config.clip.steps was changed, but config.models='shipped'"),
])
def test_shipped_models_refuse_settings_they_were_not_trained_for(tmp_path, field, value,
                                                                   message):
  from zoomshot_jax.demo import run  # pylint: disable=g-import-not-at-top
  c = demo_config.get_config("micro")
  c.models = "shipped"
  c.update_from_flattened_dict({field: value})
  with pytest.raises(UserError, match=re.escape(message)):
    run.run(c, str(tmp_path))
  assert os.listdir(tmp_path) == []
