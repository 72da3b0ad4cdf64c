"""The official VQA accuracy, normalisation, soft targets and vocabulary, by hand-worked values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zoomshot_jax.errors import UserError
from zoomshot_jax.vl import vqa_eval


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),
    ("the cat.", "cat"),
    ("dont", "don't"),
    ("Whats that", "what's that"),
    ("1,000", "1000"),                    # a comma between digits: every mark is deleted
    ("1,000 dogs!", "1000 dogs"),
    ("red,blue", "red blue"),             # otherwise a mark not next to a space becomes one
    ("yes, it is", "yes it is"),          # ... and one next to a space is deleted
    ("black-and-white", "black and white"),
    ("3.5", "3.5"),                       # a period before a digit stays
    ("5.", "5"),
    ("none", "0"),
    ("An apple\n", "apple"),
    ("Im", "im"),                         # the table's "Im" never matches lower-cased words
    ("o'clock", "o'clock"),
    ("the", ""),
])
def test_normalize_answer(raw, expected):
  assert vqa_eval.normalize_answer(raw) == expected


def test_at_most_32_periods_are_removed():
  # The official tool passes re.UNICODE (= 32) as sub()'s count.
  assert vqa_eval.normalize_answer("x." * 40).count(".") == 8


@pytest.mark.parametrize("prediction, expected", [
    ("yes", (7 * 1 + 3 * 2 / 3) / 10),    # 3 humans said yes: 0.9
    ("no", 1.0),
    ("No.", 1.0),                          # answers disagree, so both sides are normalised
    ("maybe", 0.0),
])
def test_question_accuracy_three_yes_seven_no(prediction, expected):
  human = ["yes"] * 3 + ["no"] * 7
  assert vqa_eval.question_accuracy(prediction, human) == pytest.approx(expected)


def test_question_accuracy_single_match_and_normalised_matches():
  assert vqa_eval.question_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
  # "Two", "2", "two." all read "2": 5 matches.
  human = ["Two", "Two", "2", "2", "two.", "3", "3", "3", "3", "3"]
  assert vqa_eval.question_accuracy("2", human) == 1.0
  assert vqa_eval.question_accuracy("three", human) == 1.0


def test_identical_answers_are_not_normalised():
  # The official tool skips normalisation when all human answers agree.
  human = ["yes"] * 10
  assert vqa_eval.question_accuracy("yes", human) == 1.0
  assert vqa_eval.question_accuracy(" yes\n", human) == 1.0   # whitespace is always stripped
  assert vqa_eval.question_accuracy("Yes", human) == 0.0
  assert vqa_eval.question_accuracy("yes.", human) == 0.0


def _brute_force_loo(k: int, n: int = 10) -> float:
  answers = ["a"] * k + ["b"] * (n - k)
  accs = [min(1.0, sum(a == "a" for j, a in enumerate(answers) if j != i) / 3) for i in range(n)]
  return sum(accs) / n


def test_soft_score_table_equals_leave_one_out_average():
  table = [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  for k, expected in enumerate(table):
    assert _brute_force_loo(k) == pytest.approx(expected)
    assert vqa_eval.leave_one_out_score(k) == pytest.approx(expected)


def test_soft_targets():
  answers = ["yes"] * 4 + ["no"] * 3 + ["Two", "2", "maybe"]
  vocab = ["no", "yes", "2", "cat"]
  expected = [0.9, 1.0, 0.6, 0.0]          # "maybe" is outside the vocabulary
  np.testing.assert_allclose(vqa_eval.soft_targets(answers, vocab), expected, rtol=1e-6)
  index = {a: i for i, a in enumerate(vocab)}
  np.testing.assert_allclose(vqa_eval.soft_targets(answers, index), expected, rtol=1e-6)
  assert vqa_eval.soft_targets(answers, vocab).dtype == np.float32


def test_build_answer_vocab_counts_normalised_answers_and_orders_deterministically():
  mcas = ["yes"] * 5 + ["dog"] * 3 + ["Dog."] + ["cat"] * 4 + ["2"] * 2 + ["two"] + ["bird"]
  annotations = {"annotations": [{"question_id": i, "multiple_choice_answer": a}
                                 for i, a in enumerate(mcas)]}
  # Counts: yes 5, dog 4 ("Dog." normalised), cat 4, 2 3 ("two"), bird 1.
  assert vqa_eval.build_answer_vocab(annotations, min_count=3) == ["yes", "cat", "dog", "2"]
  assert vqa_eval.build_answer_vocab(annotations["annotations"], min_count=4) == [
      "yes", "cat", "dog"]
  assert vqa_eval.build_answer_vocab(annotations["annotations"], min_count=1)[-1] == "bird"


def _annotation(qid, image_id, answers, answer_type, question_type="what"):
  return {"question_id": qid, "image_id": image_id, "question_type": question_type,
          "answer_type": answer_type, "multiple_choice_answer": answers[0],
          "answers": [{"answer_id": i + 1, "answer": a, "answer_confidence": "yes"}
                      for i, a in enumerate(answers)]}


@pytest.fixture
def vqa_files(tmp_path):
  annotations = {"annotations": [
      _annotation(1, 10, ["yes"] * 3 + ["no"] * 7, "yes/no", "is the"),
      _annotation(2, 10, ["2"] * 10, "number", "how many"),
      _annotation(3, 11, ["red"] * 10, "other"),
  ]}
  questions = {"data_subtype": "val2014", "questions": [
      {"question_id": q, "image_id": i, "question": "?"} for q, i in ((1, 10), (2, 10), (3, 11))]}
  paths = {}
  for name, obj in (("annotations", annotations), ("questions", questions)):
    paths[name] = str(tmp_path / f"{name}.json")
    with open(paths[name], "w") as f:
      json.dump(obj, f)
  return paths, annotations, questions


def test_score_predictions(vqa_files, tmp_path):
  paths, annotations, questions = vqa_files
  predictions = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "2"},
                 {"question_id": 3, "answer": "blue"}]
  pred_path = str(tmp_path / "results.json")
  with open(pred_path, "w") as f:
    json.dump(predictions, f)
  result = vqa_eval.score_predictions(pred_path, paths["annotations"], paths["questions"])
  assert result["overall"] == pytest.approx(100 * (0.9 + 1.0 + 0.0) / 3)
  assert result["per_answer_type"] == pytest.approx({"yes/no": 90.0, "number": 100.0,
                                                     "other": 0.0})
  assert result["per_question_type"]["what"] == 0.0
  assert result["num_questions"] == 3
  assert vqa_eval.score_predictions(predictions, annotations, questions) == result


@pytest.mark.parametrize("predictions, match", [
    ({"question_id": 1, "answer": "yes"}, "expected a list"),
    ([{"question_id": "1", "answer": "yes"}], r"prediction #0 .*question_id"),
    ([{"question_id": 1}], "prediction #0"),
    ([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}], "question 1 twice"),
    ([{"question_id": q, "answer": "a"} for q in (1, 2, 3, 99)], r"1 predictions .*not in.*\[99\]"),
    ([{"question_id": 1, "answer": "a"}], r"miss 2 of the 3 questions .*\[2, 3\]"),
])
def test_score_predictions_errors(vqa_files, predictions, match):
  paths, _, _ = vqa_files
  with pytest.raises(UserError, match=match):
    vqa_eval.score_predictions(predictions, paths["annotations"])


def test_score_predictions_checks_questions_match(vqa_files):
  _, annotations, questions = vqa_files
  questions["questions"][2]["image_id"] = 12
  predictions = [{"question_id": q, "answer": "a"} for q in (1, 2, 3)]
  with pytest.raises(UserError, match="question 3 is on image 12"):
    vqa_eval.score_predictions(predictions, annotations, questions)
