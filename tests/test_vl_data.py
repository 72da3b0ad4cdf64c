"""VL readers on tiny files in the official formats; tags, low-shot and split files."""

from __future__ import annotations

import dataclasses
import json
import os
import random

import numpy as np
import pytest

from zoomshot_jax.errors import UserError
from zoomshot_jax.vl import protocols, readers


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)
  return str(path)


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def _touch(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, "w").close()    # only existence is checked


# ------------------------------------------------------------------ VQA


def _vqa_annotation(qid, image_id, answers):
  return {"question_id": qid, "image_id": image_id, "question_type": "what color",
          "answer_type": "other", "multiple_choice_answer": answers[0],
          "answers": [{"answer_id": i + 1, "answer": a, "answer_confidence": "yes"}
                      for i, a in enumerate(answers)]}


@pytest.fixture
def vqa_v2(tmp_path):
  questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
               "data_subtype": "val2014", "license": {},
               "questions": [{"question_id": 420, "image_id": 42, "question": "What color?"},
                             {"question_id": 70, "image_id": 7, "question": "Is it?"}]}
  annotations = {"annotations": [_vqa_annotation(70, 7, ["yes"] * 10),
                                 _vqa_annotation(420, 42, ["red"] * 6 + ["blue"] * 4)]}
  q = _write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
  a = _write_json(tmp_path / "v2_mscoco_val2014_annotations.json", annotations)
  root = tmp_path / "coco"
  for image_id in (42, 7):
    _touch(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
  return q, a, str(root), questions, annotations


def test_read_vqa_v2_joins_questions_and_annotations(vqa_v2):
  q, a, root, _, _ = vqa_v2
  records = readers.read_vqa(q, a, root)
  assert [r.question_id for r in records] == [420, 70]     # the questions file's order
  r = records[0]
  assert r.id == 420 and r.image_id == 42 and r.question == "What color?"
  assert r.answers == ("red",) * 6 + ("blue",) * 4
  assert (r.answer_type, r.question_type, r.multiple_choice_answer) == ("other", "what color",
                                                                        "red")
  assert r.image_path == os.path.join(root, "val2014", "COCO_val2014_000000000042.jpg")
  # The split's own folder works as image_dir too.
  flat = readers.read_vqa(q, a, os.path.join(root, "val2014"))
  assert flat[0].image_path == r.image_path


def test_read_vqa_without_annotations(vqa_v2, tmp_path):
  _, _, _, questions, _ = vqa_v2
  questions = dict(questions, data_subtype="test-dev2015")
  _touch(tmp_path / "test" / "COCO_test2015_000000000042.jpg")
  _touch(tmp_path / "test" / "COCO_test2015_000000000007.jpg")
  records = readers.read_vqa(questions, None, str(tmp_path / "test"))
  assert records[0].answers is None and records[0].answer_type is None
  assert records[0].image_path.endswith("COCO_test2015_000000000042.jpg")


def test_read_vqa_missing_images(vqa_v2):
  q, a, root, _, _ = vqa_v2
  os.remove(os.path.join(root, "val2014", "COCO_val2014_000000000007.jpg"))
  with pytest.raises(UserError, match=r"1 of 2 COCO images .* missing.*000000000007\.jpg"):
    readers.read_vqa(q, a, root)
  assert len(readers.read_vqa(q, a, root, check_images=False)) == 2


def test_read_vqa_mismatched_files(vqa_v2):
  _, _, root, questions, annotations = vqa_v2
  extra = dict(annotations, annotations=annotations["annotations"] +
               [_vqa_annotation(99, 7, ["no"] * 10)])
  with pytest.raises(UserError, match=r"1 annotations .* have no question .*\[99\]"):
    readers.read_vqa(questions, extra, root)
  moved = json.loads(json.dumps(annotations))
  moved["annotations"][0]["image_id"] = 8
  with pytest.raises(UserError, match="question 70 is on image 7 .* on image 8"):
    readers.read_vqa(questions, moved, root)
  no_split = {"questions": questions["questions"]}
  with pytest.raises(UserError, match="cannot tell the COCO split"):
    readers.read_vqa(no_split, annotations, root)
  assert readers.read_vqa(no_split, annotations, root, split="val2014")[0].image_id == 42


def test_read_vqa_cp_lists_with_coco_split(tmp_path):
  questions = [{"question_id": 1, "image_id": 5, "question": "Q1?", "coco_split": "train2014"},
               {"question_id": 2, "image_id": 6, "question": "Q2?", "coco_split": "val2014"}]
  annotations = [dict(_vqa_annotation(1, 5, ["a"] * 10), coco_split="train2014"),
                 dict(_vqa_annotation(2, 6, ["b"] * 10), coco_split="val2014")]
  q = _write_json(tmp_path / "vqacp_v2_test_questions.json", questions)
  a = _write_json(tmp_path / "vqacp_v2_test_annotations.json", annotations)
  _touch(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000005.jpg")
  _touch(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000006.jpg")
  records = readers.read_vqa(q, a, str(tmp_path / "coco"))
  assert [os.path.relpath(r.image_path, tmp_path / "coco") for r in records] == [
      os.path.join("train2014", "COCO_train2014_000000000005.jpg"),
      os.path.join("val2014", "COCO_val2014_000000000006.jpg")]
  assert records[1].answers == ("b",) * 10


# -------------------------------------------------------------- SNLI-VE


def _snli_row(pair, image, label):
  return {"Flikr30kID": image, "captionID": image + "#0", "pairID": pair,
          "sentence1": "A premise.", "sentence2": f"Hypothesis {pair}.", "gold_label": label}


def test_read_snli_ve(tmp_path):
  path = _write_jsonl(tmp_path / "snli_ve_dev.jsonl", [
      _snli_row("p1", "100.jpg", "entailment"), _snli_row("p2", "100.jpg", "-"),
      _snli_row("p3", "200.jpg", "contradiction"), "", _snli_row("p4", "300", "neutral")])
  for name in ("100.jpg", "200.jpg", "300.jpg"):
    _touch(tmp_path / "flickr" / name)
  records = readers.read_snli_ve(path, str(tmp_path / "flickr"))
  assert [(r.id, r.label) for r in records] == [("p1", 0), ("p3", 2), ("p4", 1)]
  assert records[1].hypothesis == "Hypothesis p3."
  assert records[2].image_path == str(tmp_path / "flickr" / "300.jpg")
  assert readers.SNLI_VE_LABELS == {"entailment": 0, "neutral": 1, "contradiction": 2}


def test_read_snli_ve_errors(tmp_path):
  path = _write_jsonl(tmp_path / "snli_ve_train.jsonl", [
      _snli_row("p1", "100.jpg", "entailment"), _snli_row("p2", "100.jpg", "neutral"),
      _snli_row("p3", "200.jpg", "maybe")])
  with pytest.raises(UserError, match=r"snli_ve_train\.jsonl' line 3: gold_label 'maybe'"):
    readers.read_snli_ve(path, str(tmp_path))
  path = _write_jsonl(tmp_path / "snli_ve_test.jsonl", [
      _snli_row("p1", "100.jpg", "entailment"), _snli_row("p3", "200.jpg", "neutral")])
  _touch(tmp_path / "flickr" / "100.jpg")
  with pytest.raises(UserError, match=r"1 of 2 Flickr30k images .*200\.jpg"):
    readers.read_snli_ve(path, str(tmp_path / "flickr"))


# ------------------------------------------------------------------ VCR


def _vcr_row(annot_id, movie, **overrides):
  row = {"annot_id": annot_id, "movie": movie, "img_fn": f"{movie}/{annot_id}.jpg",
         "metadata_fn": f"{movie}/{annot_id}.json", "objects": ["person", "person", "car"],
         "question": ["Why", "is", [0], "next", "to", [1, 2], "?"],
         "answer_choices": [["Because", [2], "is", "hers", "."], ["No", "."], ["Yes", "."],
                            [[1], "waits", "."]],
         "answer_label": 0,
         "rationale_choices": [["R", str(i), "."] for i in range(4)], "rationale_label": 3}
  row.update(overrides)
  return row


def test_object_tags_and_rendering():
  tags = readers.object_tags(["person", "person", "car", "person"])
  assert tags == ["person1", "person2", "car1", "person3"]
  assert readers.render_tokens(["Is", [0, 1, 3], "here", "?"], tags, "x") == (
      "Is person1 and person2 and person3 here ?")


def test_read_vcr(tmp_path):
  path = _write_jsonl(tmp_path / "val.jsonl", [_vcr_row("val-0", "m1")])
  root = tmp_path / "vcr1images"
  _touch(root / "m1" / "val-0.jpg")
  _write_json(root / "m1" / "val-0.json", {"boxes": [[1, 2, 3, 4, 0.9], [5, 6, 7, 8, 0.8],
                                                     [0, 0, 9, 9, 0.7]], "segms": []})
  (r,) = readers.read_vcr(path, str(root))
  assert r.id == "val-0" and r.movie == "m1"
  assert r.question == "Why is person1 next to person2 and car1 ?"
  assert r.answer_choices[0] == "Because car1 is hers ."
  assert r.answer_choices[3] == "person2 waits ."
  assert (r.answer_label, r.rationale_label) == (0, 3)
  assert r.image_path == str(root / "m1" / "val-0.jpg")
  boxes = readers.vcr_boxes(r)
  assert boxes.shape == (3, 5) and boxes.dtype == np.float32
  np.testing.assert_allclose(boxes[1], [5, 6, 7, 8, 0.8])


def test_read_vcr_test_split_has_no_labels(tmp_path):
  row = _vcr_row("test-0", "m1")
  del row["answer_label"], row["rationale_label"]
  path = _write_jsonl(tmp_path / "test.jsonl", [row])
  (r,) = readers.read_vcr(path, str(tmp_path), check_images=False)
  assert r.answer_label is None and r.rationale_label is None


@pytest.mark.parametrize("overrides, match", [
    ({"question": ["Is", [3], "ok", "?"]}, r"val\.jsonl' line 2: object index 3 is out of range"),
    ({"answer_choices": [["a"]] * 3}, "answer_choices has 3 choices, expected 4"),
    ({"rationale_label": 4}, "rationale_label is 4, expected 0..3"),
])
def test_read_vcr_errors(tmp_path, overrides, match):
  path = _write_jsonl(tmp_path / "val.jsonl", [_vcr_row("val-0", "m1"),
                                               _vcr_row("val-1", "m1", **overrides)])
  with pytest.raises(UserError, match=match):
    readers.read_vcr(path, str(tmp_path), check_images=False)


def test_read_vcr_missing_metadata(tmp_path):
  path = _write_jsonl(tmp_path / "val.jsonl", [_vcr_row("val-0", "m1")])
  _touch(tmp_path / "img" / "m1" / "val-0.jpg")
  with pytest.raises(UserError, match=r"1 of 2 VCR image/metadata files .*val-0\.json"):
    readers.read_vcr(path, str(tmp_path / "img"))


def test_held_out_movies_split():
  records = [readers.VCRExample(f"a{i}", f"movie{i % 7}", "", "", (), "", (), (), 0, 0)
             for i in range(70)]
  train, test = protocols.held_out_movies_split(records, 0.3, seed=0)
  movie = {r.id: r.movie for r in records}
  assert sorted(train + test) == sorted(r.id for r in records)
  assert not {movie[i] for i in train} & {movie[i] for i in test}
  assert len(test) == 30                       # whole movies of 10 until >= 30% of 70
  shuffled = records[:]
  random.Random(1).shuffle(shuffled)      # the split must not depend on the file's order
  assert set(protocols.held_out_movies_split(shuffled, 0.3, seed=0)[1]) == set(test)
  tests = {tuple(protocols.held_out_movies_split(records, 0.3, seed=s)[1]) for s in range(5)}
  assert len(tests) > 1


# ------------------------------------------------------ low-shot / splits


@dataclasses.dataclass(frozen=True)
class _Rec:
  id: str


def test_low_shot_is_seeded_nested_and_order_independent():
  records = [_Rec(f"x{i}") for i in range(2000)]
  subsets = {p: protocols.low_shot(records, p, seed=3) for p in protocols.LOW_SHOT_PERCENTS}
  assert [len(subsets[p]) for p in protocols.LOW_SHOT_PERCENTS] == [2, 20, 100, 200, 2000]
  for small, big in zip(protocols.LOW_SHOT_PERCENTS, protocols.LOW_SHOT_PERCENTS[1:]):
    assert set(subsets[small]) <= set(subsets[big])
  ids = [r.id for r in subsets[5]]
  assert ids == sorted(ids, key=lambda s: int(s[1:]))          # kept in the records' order
  shuffled = records[:]
  random.Random(0).shuffle(shuffled)
  assert set(protocols.low_shot(shuffled, 5, seed=3)) == set(subsets[5])
  assert set(protocols.low_shot(records, 5, seed=4)) != set(subsets[5])
  assert len(protocols.low_shot(records[:10], 0.1, seed=0)) == 1
  with pytest.raises(UserError, match="percent 0 must be in"):
    protocols.low_shot(records, 0, seed=0)


def test_apply_split_file(tmp_path):
  records = [_Rec(str(i)) for i in range(6)]
  path = _write_json(tmp_path / "split.json", {"train": [0, 1, "2"], "test": [5]})
  train, test = protocols.apply_split_file(records, path)
  assert [r.id for r in train] == ["0", "1", "2"] and [r.id for r in test] == ["5"]
  _write_json(tmp_path / "bad.json", {"train": [0, 7], "test": [8]})
  with pytest.raises(UserError, match=r"bad\.json'.*2 ids are not in the data.*\['7', '8'\]"):
    protocols.apply_split_file(records, str(tmp_path / "bad.json"))
  _write_json(tmp_path / "overlap.json", {"train": [0, 1], "test": [1]})
  with pytest.raises(UserError, match="1 ids are in both"):
    protocols.apply_split_file(records, str(tmp_path / "overlap.json"))
  _write_json(tmp_path / "shape.json", {"train": [0]})
  with pytest.raises(UserError, match="should be"):
    protocols.apply_split_file(records, str(tmp_path / "shape.json"))
