"""The synthetic-data toolkit: pairwise prompts, the teacher filter, their CLI."""

import itertools
import json
import os
import types

import numpy as np
import pytest

from tests import procs
from zoomshot_jax import evaluation, sharding
from zoomshot_jax.demo import shipped, synthetic
from zoomshot_jax.errors import UserError
from zoomshot_jax.synthetic import prompts, teacher_filter


def _covers_every_pair(rows, values):
  for a, b in itertools.combinations(range(len(values)), 2):
    seen = {(r[a], r[b]) for r in rows}
    if seen != set(itertools.product(values[a], values[b])):
      return False
  return True


@pytest.mark.parametrize("sizes,count", [((15, 15, 15, 15), 265), ((5, 5, 5, 5), 30)])
def test_covering_array_has_the_references_counts(sizes, count):
  values = [[f"{i}:{v}" for v in range(n)] for i, n in enumerate(sizes)]
  rows = prompts.covering_array(values)
  assert len(rows) == count                      # the reference's 265 and 30
  assert _covers_every_pair(rows, values)


def test_covering_array_of_uneven_attributes_covers_every_pair():
  values = [["a", "b"], ["x", "y", "z"], ["1", "2", "3", "4", "5"], ["p", "q", "r", "s"]]
  rows = prompts.covering_array(values)
  assert _covers_every_pair(rows, values)
  assert len(rows) < 2 * 3 * 5 * 4 and len(rows) >= 5 * 4   # far fewer than the product


def test_build_fills_the_template_and_takes_class_overrides():
  spec = {"template": "a photo of a {cls} ({super}, pet), {location}, {angle}",
          "super": "pet",
          "attributes": {"location": ["indoors", "in a garden"], "angle": ["front", "side"]},
          "classes": {"Abyssinian": {"super": "cat"},
                      "pug": {"super": "dog", "attributes": {"angle": ["top"]}}}}
  rows = prompts.build(spec)
  assert prompts.counts(rows) == {"Abyssinian": 4, "pug": 2}
  assert {r["prompt"] for r in rows if r["class"] == "pug"} == {
      "a photo of a pug (dog, pet), indoors, top", "a photo of a pug (dog, pet), in a garden, top"}
  assert all(r["prompt"].startswith("a photo of a Abyssinian (cat, pet)")
             for r in rows if r["class"] == "Abyssinian")
  with pytest.raises(UserError, match=r"uses \['weather'\], which class 'Abyssinian' has no values"):
    prompts.build({**spec, "template": "a {cls}, {weather}"})
  with pytest.raises(UserError, match="'template' must be a string with a {cls} field"):
    prompts.build({"attributes": {}}, ["x"])


def test_the_demo_worlds_prompts_cover_its_attributes():
  rows = synthetic.prompts()
  assert len(rows) == 64 * 20
  attrs = synthetic.ATTRIBUTES["attributes"]
  names = list(attrs)
  for cls in ("red circle", "pink ring"):
    mine = [tuple(r["attributes"][n] for n in names) for r in rows if r["class"] == cls]
    assert _covers_every_pair(mine, [attrs[n] for n in names])


def test_prompts_command_writes_jsonl_and_refuses_bad_files(tmp_path):
  spec = tmp_path / "attrs.json"
  spec.write_text(json.dumps({"template": "a {cls}, {where}",
                              "attributes": {"where": ["here", "there"]}}))
  names = tmp_path / "names.txt"
  names.write_text("cat\ndog\n")
  out = tmp_path / "p.jsonl"
  from zoomshot_jax.tools import synthetic as cli  # pylint: disable=g-import-not-at-top
  line = cli.prompts_command(str(spec), str(names), str(out))
  assert line == f"4 prompts for 2 classes (2 per class): {out}"
  assert [json.loads(l)["prompt"] for l in out.read_text().splitlines()] == [
      "a cat, here", "a cat, there", "a dog, here", "a dog, there"]
  spec.write_text("{not json")
  r = procs.run(["-m", "zoomshot_jax.tools.synthetic", "prompts", f"--attributes={spec}",
                 f"--out={out}"])
  assert r.returncode == 2 and "is not JSON" in r.stderr and "Traceback" not in r.stderr


def _world_folder(root, classes, per_class):
  rows = [r for r in synthetic.prompts() if r["class"] in classes and r["index"] < per_class]
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for r in rows:
    d = os.path.join(root, r["class"].replace(" ", "_"))
    os.makedirs(d, exist_ok=True)
    Image.fromarray(synthetic.image(r, 0, 0, 48)).save(os.path.join(d, f"{r['index']}.png"))
  return str(root)


def test_filter_keeps_what_the_teacher_recognises(tmp_path):
  """The shipped demo CLIP on its own world's synthetic images: it names most
  of them right, and what is written is exactly what it names right."""
  from zoomshot_jax import encoders  # pylint: disable=g-import-not-at-top
  clip = encoders.load_clip(shipped.verify("clip"))
  images = _world_folder(tmp_path / "images", ["red circle", "blue star", "green heart",
                                               "yellow cross"], per_class=8)
  out = str(tmp_path / "kept")
  report = teacher_filter.filter_folder(clip, images, out, sharding.make_mesh([("data", -1)]),
                                        batch_size=16)
  assert sum(report["total"].values()) == 32
  assert sum(report["kept"].values()) >= 24
  rows = [json.loads(l) for l in open(os.path.join(out, "manifest.jsonl"))]
  assert len(rows) == 32
  kept = sorted(r["file"] for r in rows if r["kept"])
  assert all(r["kept"] == (r["predicted"] == r["class"]) for r in rows)
  written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out)
                   for f in fs if f.endswith(".png"))
  assert written == kept


def test_filter_refuses_to_leave_a_class_empty(tmp_path, monkeypatch):
  images = _world_folder(tmp_path / "images", ["red circle", "blue star"], per_class=3)

  class Fake:
    # Every image predicted as directory 0 (blue_star, sorted first): the
    # other class loses all its images.
    logits = np.tile([[1.0, 0.0]], (6, 1))

  monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: Fake())
  monkeypatch.setattr(evaluation, "build_classifier", lambda *a, **k: np.eye(2))
  with pytest.raises(UserError, match=r"keeps no image of class\(es\) \['red_circle'\]"):
    teacher_filter.filter_folder(types.SimpleNamespace(image_features=None, params=None,
                                                       preprocess=None, logit_scale=1.0),
                                 images, str(tmp_path / "out"), None)
  assert not os.path.exists(tmp_path / "out")
