"""The demo world's VL tasks: real-format files the readers accept, answers the scenes decide.

Facts are recomputed here from the documented seed key with render.sample_scene,
and the world's phrases are interpreted by a small parser of this file, not by
the generator's code.
"""

from __future__ import annotations

import collections
import json
import os
import re
import zlib

import numpy as np
import pytest
from PIL import Image

from zoomshot_jax.errors import UserError
from zoomshot_jax.vl import protocols, readers, vqa_eval
from zoomshot_jax.world import render, vl_files, vl_text

SEED, N, N_VAL, SIZE = 3, 12, 6, 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("vl_world"))
  return root, vl_files.write_all(root, "clean", {"train": N, "val": N_VAL}, SEED, SIZE)


def _scene(task, split, index, seed=SEED):
  rng = np.random.default_rng([seed, vl_text.TASK_IDS[task], zlib.crc32(split.encode()), index])
  return render.sample_scene(rng, vl_text.TWO_OBJECTS_FRACTION)


def _names(o):
  return render.SHAPES[o.shape], render.COLOUR_NAMES[o.colour], render.SIZES[o.size]


def _quadrant(o):
  return ("top" if o.y < 0.5 else "bottom"), ("left" if o.x < 0.5 else "right")


_REF = r"the (?:(small|large) )?(?:(\w+) )?(\w+)(?: on the (left|right))?"


def _resolve(scene, phrase):
  """The one object a phrase like "the large red object on the left" names."""
  m = re.fullmatch(_REF, phrase)
  assert m, phrase
  size, colour, noun, side = m.groups()
  hits = []
  for i, o in enumerate(scene.objects):
    shape, c, z = _names(o)
    if side:
      other = scene.objects[1 - i]
      assert abs(o.x - other.x) >= vl_text.SIDE_MARGIN, phrase
      if (o.x < other.x) != (side == "left"):
        continue
    if noun not in ("object", shape) or colour not in (None, c) or size not in (None, z):
      continue
    hits.append(o)
  assert len(hits) == 1, (phrase, scene)
  return hits[0]


def _side(scene, o):
  other = [p for p in scene.objects if p is not o][0]
  assert abs(o.x - other.x) >= vl_text.SIDE_MARGIN
  return "left" if o.x < other.x else "right"


def _vqa_truth(scene, question):
  q = question.lower()
  objs = scene.objects
  if m := re.fullmatch(f"what colour is ({_REF})\\?", q):
    return _names(_resolve(scene, m[1]))[1]
  if m := re.fullmatch(f"what shape is ({_REF})\\?", q):
    return _names(_resolve(scene, m[1]))[0]
  if m := (re.fullmatch(f"is ({_REF}) small or large\\?", q)
           or re.fullmatch(f"how big is ({_REF})\\?", q)):
    return _names(_resolve(scene, m[1]))[2]
  if m := re.fullmatch(f"is ({_REF}) on the left or the right\\?", q):
    return _side(scene, _resolve(scene, m[1]))
  if q == "how many objects are there?":
    return str(len(objs))
  if m := re.fullmatch(r"how many (\w+) objects are there\?", q):
    return str(sum(_names(o)[1] == m[1] for o in objs))
  if m := re.fullmatch(r"how many (\w+) are there\?", q):
    plural = lambda shape: shape + ("es" if shape == "cross" else "s")   # noqa: E731
    return str(sum(plural(_names(o)[0]) == m[1] for o in objs))
  if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
    return "yes" if any(_names(o)[:2] == (m[2], m[1]) for o in objs) else "no"
  raise AssertionError(f"unknown question {question!r}")


def _statement_truth(scene, sentence):
  s = sentence.lower().rstrip(".")
  objs = scene.objects
  if m := re.fullmatch(r"the background is (\w+)", s):
    return m[1] == render.BACKGROUNDS[scene.background]
  if s == "there is only one object":
    return len(objs) == 1
  if s == "there are two objects":
    return len(objs) == 2
  if m := re.fullmatch(r"there is an? (?:(small|large) )?(\w+) (\w+)", s):
    return any(_names(o)[1:3] == (m[2], m[1] or _names(o)[2]) and _names(o)[0] == m[3]
               for o in objs)
  if m := re.fullmatch(f"({_REF}) is on the (left|right)", s):
    return _side(scene, _resolve(scene, m[1])) == m[6]
  if m := re.fullmatch(f"({_REF}) is (\\w+)", s):
    _, colour, size = _names(_resolve(scene, m[1]))
    assert m[6] in render.COLOUR_NAMES + render.SIZES
    return m[6] in (colour, size)
  raise AssertionError(f"unknown statement {sentence!r}")


_NEUTRAL = ("was drawn by a child", "is made of metal", "taken in the morning", "is heavy",
            "about to move", "a gift for a friend")


def _words(text):
  return re.findall(r"\w+|[^\w\s]+", text.lower())


def _tree(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
  return out


# ---------------------------------------------------------------------- VQA


def test_vqa_reads_back_and_answers_are_the_scenes(world):
  _, paths = world
  records = readers.read_vqa(**paths["vqa"]["train"])
  assert {r.image_id for r in records} == set(range(1, N + 1))
  vocab = {a: i for i, a in enumerate(vqa_eval.build_answer_vocab(
      paths["vqa"]["train"]["annotations"], min_count=1))}
  partial, types = 0, collections.defaultdict(collections.Counter)
  for r in records:
    truth = _vqa_truth(_scene("vqa", "train2014", r.image_id - 1), r.question)
    assert r.multiple_choice_answer == truth, r
    assert len(r.answers) == 10 and r.answers.count(truth) >= 10 - vl_text.MAX_NOISY
    target = vqa_eval.soft_targets(r.answers, vocab)
    assert target[vocab[truth]] == 1.0           # >= 4 humans agree
    partial += int(((target > 0) & (target < 1)).any())
    types[r.answer_type][truth] += 1
    # The world's own words answer.
    assert truth in render.COLOUR_NAMES + render.SHAPES + render.SIZES + (
        "0", "1", "2", "yes", "no", "left", "right")
  assert partial > 0                             # noisy humans give partial targets
  assert types["yes/no"]["yes"] == types["yes/no"]["no"] == N // 2
  assert set(types["number"]) >= {"1", "2"}
  assert len([a for a in types["other"] if a in render.COLOUR_NAMES]) >= 3
  assert {r.answer_type for r in records} == {"yes/no", "number", "other"}


def test_vqa_low_shot_and_images(world):
  _, paths = world
  records = readers.read_vqa(**paths["vqa"]["train"])
  subset = protocols.low_shot(records, 10, seed=0)
  assert len(subset) == round(len(records) * 0.1)
  assert {r.id for r in subset} <= {r.id for r in records}
  img = Image.open(records[0].image_path)
  assert img.format == "JPEG" and img.size == (SIZE, SIZE) and img.mode == "RGB"
  val = readers.read_vqa(**paths["vqa"]["val"])
  assert {os.path.basename(os.path.dirname(r.image_path)) for r in val} == {"val2014"}


# ------------------------------------------------------------------ SNLI-VE


def test_snli_ve_labels_are_balanced_and_decided_by_the_scene(world):
  _, paths = world
  records = readers.read_snli_ve(**paths["snli_ve"]["train"])
  assert len(records) == 3 * N
  by_image = collections.defaultdict(list)
  for r in records:
    by_image[os.path.basename(r.image_path)].append(r)
  assert len(by_image) == N
  for image, rs in by_image.items():
    assert sorted(r.label for r in rs) == [0, 1, 2]   # one per label: balanced exactly
    scene = _scene("snli_ve", "train", int(image.split("_")[1].split(".")[0]))
    for r in rs:
      if r.label == readers.SNLI_VE_LABELS["neutral"]:
        assert any(p in r.hypothesis for p in _NEUTRAL), r.hypothesis
      else:
        assert _statement_truth(scene, r.hypothesis) == (r.label == 0), r


# ---------------------------------------------------------------------- VCR


def _vcr_answer_truth(scene, tokens):
  if tokens[0] == "There":
    return tokens[2] == ("one", "two")[len(scene.objects) - 1]
  o = scene.objects[tokens[0][0]]
  if tokens[2] == "at":
    return (tokens[4], tokens[7]) == _quadrant(o)
  return tokens[2] == _names(o)[1]


def test_vcr_reads_back_with_one_true_choice_each(world):
  _, paths = world
  with open(paths["vcr"]["train"]["path"]) as f:
    rows = [json.loads(line) for line in f]
  records = readers.read_vcr(**paths["vcr"]["train"])
  assert len(records) == len(rows) == N
  kinds = collections.Counter()
  for row, rec in zip(rows, records):
    index = int(row["annot_id"].split("-")[1])
    scene = _scene("vcr", "train", index)
    assert row["objects"] == [render.SHAPES[o.shape] for o in scene.objects]
    assert row["movie"] == f"world_movie_{index % vl_files.NUM_MOVIES}"
    refs = [i for tokens in [row["question"], *row["answer_choices"], *row["rationale_choices"]]
            for t in tokens if isinstance(t, list) for i in t]
    assert refs and all(0 <= i < len(scene.objects) for i in refs)
    truth = [_vcr_answer_truth(scene, a) for a in row["answer_choices"]]
    assert truth == [k == row["answer_label"] for k in range(4)], row
    # Rationales end ", and [i] is <size> on a <background> background .".
    tails = [r[-8:] for r in row["rationale_choices"]]
    truth = [_names(scene.objects[t[0][0]])[2] == t[2]
             and render.BACKGROUNDS[scene.background] == t[5] for t in tails]
    assert truth == [k == row["rationale_label"] for k in range(4)], row
    kinds[row["question"][0]] += 1
    boxes = readers.vcr_boxes(rec)
    want = [[(o.x - o.radius) * SIZE, (o.y - o.radius) * SIZE, (o.x + o.radius) * SIZE,
             (o.y + o.radius) * SIZE, 1.0] for o in scene.objects]
    np.testing.assert_allclose(boxes, want, rtol=1e-5)
  assert len(kinds) >= 2
  labels = collections.Counter(r.answer_label for r in records)
  assert len(labels) >= 3 and max(labels.values()) <= N // 2


def test_vcr_held_out_movies_and_split_file(world, tmp_path):
  _, paths = world
  records = readers.read_vcr(**paths["vcr"]["train"])
  train, test = protocols.held_out_movies_split(records, 0.25, seed=0)
  assert sorted(train + test) == sorted(r.id for r in records) and train and test
  movie = {r.id: r.movie for r in records}
  assert not {movie[i] for i in train} & {movie[i] for i in test}
  split_file = tmp_path / "split.json"
  split_file.write_text(json.dumps({"train": train, "test": test}))
  a, b = protocols.apply_split_file(records, str(split_file))
  assert [r.id for r in a] == train and [r.id for r in b] == test


# ------------------------------------------------------------------- shared


def test_every_word_is_in_the_vocabulary(world):
  _, paths = world
  texts = []
  for split in ("train", "val"):
    vqa = readers.read_vqa(**paths["vqa"][split])
    texts += [r.question for r in vqa] + [a for r in vqa for a in r.answers]
    with open(paths["snli_ve"][split]["path"]) as f:
      texts += [v for line in f for k, v in json.loads(line).items()
                if k in ("sentence1", "sentence2")]
    texts += [t for r in readers.read_vcr(**paths["vcr"][split])
              for t in (r.question, *r.answer_choices, *r.rationale_choices)]
  words = {w for t in texts for w in _words(t)}
  assert words <= set(vl_text.vocabulary()), words - set(vl_text.vocabulary())


def test_same_seed_same_files_other_seed_other_files(world, tmp_path):
  root, _ = world
  again = vl_files.write_all(str(tmp_path / "again"), "clean", {"train": N, "val": N_VAL}, SEED,
                             SIZE)
  assert _tree(root) == _tree(str(tmp_path / "again"))
  assert again["vcr"]["val"]["path"] == str(tmp_path / "again" / "vcr" / "val.jsonl")
  other = vl_files.write_vqa(str(tmp_path / "other"), "clean", N, SEED + 1, "train2014", SIZE)
  with open(other["questions"]) as f, open(os.path.join(root, "vqa", os.path.basename(
      other["questions"]))) as g:
    assert json.load(f)["questions"] != json.load(g)["questions"]


def test_domain_shift_renders_the_same_questions_as_photo(tmp_path):
  paths = vl_files.write_domain_shift(str(tmp_path), {"train": 2, "val": 3}, SEED, 16)
  assert set(paths["clean"]["vqa"]) == {"train", "val"} and set(paths["photo"]["vqa"]) == {"val"}
  clean, photo = (readers.read_vqa(**paths[r]["vqa"]["val"]) for r in ("clean", "photo"))
  strip = lambda rs: [(r.question, r.answers) for r in rs]   # noqa: E731
  assert strip(clean) == strip(photo)
  for task in ("snli_ve", "vcr"):
    with open(paths["clean"][task]["val"]["path"]) as f, open(
        paths["photo"][task]["val"]["path"]) as g:
      assert f.read() == g.read()
  pixels = [np.asarray(Image.open(r.image_path)) for r in (clean[0], photo[0])]
  assert not np.array_equal(*pixels)


def test_a_pool_writes_the_same_files(tmp_path, monkeypatch):
  serial = vl_files.write_snli_ve(str(tmp_path / "serial"), "photo", 6, SEED, "dev", 16)
  monkeypatch.setattr(vl_files, "_MIN_POOL_SIZE", 2)
  monkeypatch.setattr(vl_files, "_CHUNK_SIZE", 1)
  pooled = vl_files.write_snli_ve(str(tmp_path / "pooled"), "photo", 6, SEED, "dev", 16)
  assert _tree(os.path.dirname(serial["path"])) == _tree(os.path.dirname(pooled["path"]))


@pytest.mark.parametrize("call, match", [
    (lambda d: vl_files.write_vqa(d, "sketch", 2), "renderer 'sketch'"),
    (lambda d: vl_files.write_snli_ve(d, "clean", 0), "num_images=0"),
    (lambda d: vl_files.write_vcr(d, "clean", 2, split_name="val/2"), "split name"),
    (lambda d: vl_files.write_all(d, "clean", {"training": 2}), "'training'"),
    (lambda d: vl_files.write_domain_shift(d, {"train": 2}), "test_split 'val'"),
])
def test_user_errors(tmp_path, call, match):
  with pytest.raises(UserError, match=match):
    call(str(tmp_path))
