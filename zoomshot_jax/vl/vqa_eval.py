"""The official VQA accuracy, its answer normalisation and the soft training targets.

Reproduces the semantics of the VQA evaluation tool (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py, as of "Fixed processing
answers bug"), quirks included, so that our numbers are comparable with
published ones. The quirks are marked "official:" below.

Accuracy of a prediction on one question with human answers g_1..g_n (n = 10):
the mean over i of min(1, #{j != i : g_j == prediction} / 3), reported x100.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from zoomshot_jax.errors import UserError
from zoomshot_jax.vl import files, readers

# The official table, every entry kept. Words are lower-cased before the
# look-up, so the capitalised keys ("Im", "Ive", ...) never match; and
# "somebody'd" -> "somebodyd" is the table's own typo. Both as in the tool.
_CONTRACTIONS = {
    "'ow'sat": "'ow's'at", "'ows'at": "'ow's'at", "I'dve": "I'd've", "Id've": "I'd've",
    "Im": "I'm", "Ive": "I've", "aint": "ain't", "arent": "aren't", "cant": "can't",
    "couldn'tve": "couldn't've", "couldnt": "couldn't", "couldnt've": "couldn't've",
    "couldve": "could've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadn'tve": "hadn't've", "hadnt": "hadn't", "hadnt've": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "he'dve": "he'd've", "hed": "he'd", "hed've": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't",
    "it'dve": "it'd've", "itd": "it'd", "itd've": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightn'tve": "mightn't've", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "shant": "shan't", "she'dve": "she'd've",
    "she's": "she's", "shed've": "she'd've", "shouldn'tve": "shouldn't've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldve": "should've",
    "somebody'd": "somebodyd", "somebody'dve": "somebody'd've",
    "somebodyd've": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someone'dve": "someone'd've", "someoned": "someone'd", "someoned've": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "something'dve": "something'd've",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "somethingll": "something'll", "thats": "that's", "there'dve": "there'd've",
    "thered": "there'd", "thered've": "there'd've", "therere": "there're", "theres": "there's",
    "they'dve": "they'd've", "theyd": "they'd", "theyd've": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "we'dve": "we'd've", "wed've": "we'd've", "werent": "weren't", "weve": "we've",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "who'dve": "who'd've", "whod": "who'd", "whod've": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldn'tve": "wouldn't've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldve": "would've", "y'all'dve": "y'all'd've",
    "y'alld've": "y'all'd've", "y'allll": "y'all'll", "yall": "y'all",
    "yall'd've": "y'all'd've", "yall'll": "y'all'll", "you'dve": "you'd've", "youd": "you'd",
    "youd've": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Not in the list, so kept: the apostrophe, colon, '*', '#', '$', '%', '&'.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# official: written "(?!<=\d)(\.)(?!\d)", meant as "a period not between
# digits", but "(?!<=" is a look-ahead for the text "<=", always true before
# a ".". So: every period not followed by a digit ("5." -> "5", "3.5" and ".5"
# kept). And the tool passes re.UNICODE (32) where sub() takes `count`, so at
# most 32 periods go.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_COUNT = int(re.UNICODE)


def _strip(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
  # official: a mark touching a space, or any mark at all once the text has a
  # comma between digits ("1,000"), is deleted; otherwise it becomes a space
  # ("black-and-white" -> "black and white"). The test reads the input text,
  # not the partly processed one.
  drop_all = _COMMA_IN_NUMBER.search(text) is not None
  out = text
  for p in _PUNCTUATION:
    out = out.replace(p, "" if drop_all or p + " " in text or " " + p in text else " ")
  return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
  words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


# Cached: answers repeat (VQA v2 train has 4.4M human answers, ~0.2M distinct),
# and targets, vocabulary and scoring all normalise them.
@functools.lru_cache(maxsize=1 << 18)
def normalize_answer(text: str) -> str:
  """The official normalisation of an answer: whitespace, punctuation, digits, articles,
  contractions ("The Two dogs." -> "2 dogs", "dont" -> "don't", "1,000" -> "1000")."""
  return _process_digit_article(_process_punctuation(_strip(text)))


def question_accuracy(prediction: str, human: Sequence[str]) -> float:
  """Official accuracy in [0, 1] of one predicted answer against the human answers.

  Args:
    prediction: the predicted answer, raw.
    human: the human answers of the question, raw (10 in VQA v2).
  """
  pred = _strip(prediction)
  gts = [_strip(g) for g in human]
  # official: the punctuation/digit/article processing is applied to the
  # answers and the prediction only when the human answers are not all
  # identical. With 10 x "yes", "Yes" or "yes." scores 0.
  if len(set(gts)) > 1:
    gts = [normalize_answer(g) for g in gts]
    pred = normalize_answer(pred)
  matches = sum(g == pred for g in gts)
  # Leaving out answer i removes one match exactly when g_i matched.
  return sum(min(1.0, (matches - (g == pred)) / 3) for g in gts) / len(gts)


def leave_one_out_score(count: int, num_answers: int = 10) -> float:
  """The accuracy of an answer given by `count` of `num_answers` humans.

  For 10 humans: 0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, >= 4.
  """
  return (count * min(1.0, (count - 1) / 3) + (num_answers - count) * min(1.0, count / 3)
          ) / num_answers


def soft_targets(answers: Sequence[str], vocab: Sequence[str] | Mapping[str, int]) -> np.ndarray:
  """The official score of every vocabulary answer: the BCE training target.

  Human answers are normalised (always, unlike the evaluator's all-identical
  shortcut: a target must not depend on whether the humans agreed on spelling).

  Args:
    answers: the question's human answers, raw.
    vocab: the answer vocabulary (`build_answer_vocab`), or {answer: index}
      (faster when called per question).

  Returns:
    [len(vocab)] float32; answers outside the vocabulary get no target.
  """
  index = vocab if isinstance(vocab, Mapping) else {a: i for i, a in enumerate(vocab)}
  counts: dict[str, int] = {}
  for a in answers:
    a = normalize_answer(a)
    counts[a] = counts.get(a, 0) + 1
  target = np.zeros([len(index)], np.float32)
  for a, c in counts.items():
    if a in index:
      target[index[a]] = leave_one_out_score(c, len(answers))
  return target


def _annotation_list(annotations) -> list[dict]:
  if isinstance(annotations, (str, os.PathLike, dict)):
    return readers.load_vqa_json(annotations, "annotations")[1]
  return list(annotations)


def build_answer_vocab(annotations: Iterable[dict] | dict | str, min_count: int = 9) -> list[str]:
  """Normalised `multiple_choice_answer`s of at least `min_count` questions (METHODS.md).

  Args:
    annotations: annotation entries, or a loaded / on-disk annotations file;
      chain train and val entries for the usual 3,129 answers of VQA v2.
    min_count: fewest questions an answer must be the answer of.

  Returns:
    The answers, most frequent first, ties alphabetical (deterministic).
  """
  counts: dict[str, int] = {}
  for a in _annotation_list(annotations):
    answer = normalize_answer(str(a["multiple_choice_answer"]))
    counts[answer] = counts.get(answer, 0) + 1
  return sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))


def _check_predictions(predictions, name: str) -> dict[int, str]:
  if not isinstance(predictions, list):
    raise UserError(f"predictions {name} are a {type(predictions).__name__}, expected a list "
                    f'[{{"question_id": int, "answer": str}}] (the official results format).')
  by_id = {}
  for i, p in enumerate(predictions):
    ok = (isinstance(p, dict) and isinstance(p.get("question_id"), int)
          and not isinstance(p.get("question_id"), bool) and isinstance(p.get("answer"), str))
    if not ok:
      raise UserError(f"prediction #{i} in {name} is {p!r:.120}; expected "
                      f'{{"question_id": int, "answer": str}}.')
    if p["question_id"] in by_id:
      raise UserError(f"predictions {name} answer question {p['question_id']} twice; give one "
                      "answer per question.")
    by_id[p["question_id"]] = p["answer"]
  return by_id


def score_predictions(predictions, annotations, questions=None) -> dict:
  """The official VQA accuracy of a results list, overall and per answer/question type.

  Args:
    predictions: `[{"question_id": int, "answer": str}]`, or a path to it.
    annotations: an annotations file (VQA v2 or VQA-CP v2), a path or loaded.
    questions: the matching questions file, optional: when given, the two
      are checked to be a pair.

  Returns:
    {"overall": float, "per_answer_type": {type: float},
     "per_question_type": {type: float}, "num_questions": int}, accuracies
    x100 and unrounded (the official tool rounds to 2 decimals).
  """
  name = "given"
  if isinstance(predictions, (str, os.PathLike)):
    name = f"in {os.fspath(predictions)!r}"
    predictions = files.read_json(os.fspath(predictions))
  pred = _check_predictions(predictions, name)
  a_name = readers.source_name(annotations, "annotations")
  a_list = _annotation_list(annotations)
  if questions is not None:
    q_name = readers.source_name(questions, "questions")
    by_id = readers.join_vqa(readers.load_vqa_json(questions, "questions")[1], a_list,
                             q_name, a_name)[1]
  else:
    by_id = readers.index_by_question_id(a_list, a_name)
  if not by_id:
    raise UserError(f"{a_name} holds no annotations; nothing to score.")
  unknown = [q for q in pred if q not in by_id]
  if unknown:
    raise UserError(f"{len(unknown)} predictions {name} are for question ids not in "
                    f"{a_name} (e.g. {unknown[:5]}); are they for another split?")
  missing = [q for q in by_id if q not in pred]
  if missing:
    raise UserError(f"predictions {name} miss {len(missing)} of the {len(by_id)} questions in "
                    f"{a_name} (e.g. question ids {missing[:5]}); the official metric needs an "
                    "answer for every question.")
  overall, per_answer, per_question = [], {}, {}
  for qid, a in by_id.items():
    acc = question_accuracy(pred[qid], readers.human_answers(a, f"{a_name} question {qid}"))
    overall.append(acc)
    per_answer.setdefault(a.get("answer_type"), []).append(acc)
    per_question.setdefault(a.get("question_type"), []).append(acc)

  def mean100(x):
    return 100.0 * sum(x) / len(x)

  return {"overall": mean100(overall),
          "per_answer_type": {k: mean100(v) for k, v in per_answer.items()},
          "per_question_type": {k: mean100(v) for k, v in per_question.items()},
          "num_questions": len(overall)}
