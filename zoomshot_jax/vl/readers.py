"""Readers for the VL tasks' files as distributed: VQA v2 / VQA-CP v2, SNLI-VE, VCR.

Each reader returns a list of small frozen dataclass records (no tf.data yet);
the formats are in METHODS.md, "Data formats and metrics for the VL tasks".
Every record has an `id` (VQA `question_id`, SNLI-VE `pairID`, VCR `annot_id`)
that `low_shot`, `apply_split_file` and `held_out_movies_split` work on.

Local paths are read with the standard library; paths with a scheme (`gs://`)
go through `tf.io.gfile`, imported only then, because importing TensorFlow
costs seconds that a local read does not need. Image files are checked for
local paths only, as `data.sources` does (a listing per folder, not a stat per
file: COCO train2014 alone has 83k images).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from zoomshot_jax.errors import UserError
from zoomshot_jax.vl.files import _field, _isdir, _read_jsonl, check_files_exist, read_json

# SNLI-VE's three classes, in the order of the classifier's logits.
SNLI_VE_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}

VCR_NUM_CHOICES = 4


# ----------------------------------------------------------------- VQA v2


@dataclasses.dataclass(frozen=True)
class VQAExample:
  """One VQA v2 / VQA-CP v2 question; the answer fields are None without annotations."""
  question_id: int
  image_id: int
  question: str
  image_path: str
  answers: tuple[str, ...] | None = None   # the 10 human answers, raw
  multiple_choice_answer: str | None = None
  answer_type: str | None = None           # "yes/no" | "number" | "other"
  question_type: str | None = None

  @property
  def id(self) -> int:
    return self.question_id


def source_name(source, key: str) -> str:
  """How error messages name a file given as a path or as loaded JSON."""
  return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else f"the {key} given"


def load_vqa_json(source, key: str) -> tuple[object, list[dict]]:
  """(whole JSON, entry list) of a VQA questions/annotations file or loaded JSON.

  VQA v2 files are `{key: [...], "data_subtype": ..., ...}`; VQA-CP v2 files
  are the list itself.
  """
  obj = read_json(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else source
  entries = obj.get(key) if isinstance(obj, dict) else obj
  if not isinstance(entries, list):
    raise UserError(f"{source_name(source, key)} is not a VQA {key} file: expected "
                    f"{{{key!r}: [...]}} (VQA v2) or a list (VQA-CP v2).")
  return obj, entries


def index_by_question_id(entries: list[dict], where: str) -> dict[int, dict]:
  """{question_id: entry}; UserError for a malformed entry or a repeated id."""
  by_id = {}
  for i, e in enumerate(entries):
    if not isinstance(e, dict):
      raise UserError(f"{where} entry #{i} is {e!r:.80}, expected a JSON object.")
    qid = _field(e, "question_id", int, f"{where} entry #{i}")
    if qid in by_id:
      raise UserError(f"{where} has question_id {qid} twice; each question appears once.")
    by_id[qid] = e
  return by_id


def join_vqa(questions: list[dict], annotations: list[dict], q_name: str,
             a_name: str) -> tuple[dict[int, dict], dict[int, dict]]:
  """({question_id: question}, {question_id: annotation}), checked to match.

  The two files must hold the same question ids with the same image ids;
  otherwise they are not a pair (e.g. train questions with val annotations).
  """
  q_by_id = index_by_question_id(questions, q_name)
  a_by_id = index_by_question_id(annotations, a_name)
  orphans = [qid for qid in a_by_id if qid not in q_by_id]
  if orphans:
    raise UserError(f"{len(orphans)} annotations in {a_name} have no question in {q_name} "
                    f"(question ids {orphans[:5]}); pass the questions file of the same split.")
  unanswered = [qid for qid in q_by_id if qid not in a_by_id]
  if unanswered:
    raise UserError(f"{len(unanswered)} questions in {q_name} have no annotation in {a_name} "
                    f"(question ids {unanswered[:5]}); pass the annotations of the same split.")
  for qid, a in a_by_id.items():
    q_img = _field(q_by_id[qid], "image_id", int, f"{q_name} question {qid}")
    a_img = _field(a, "image_id", int, f"{a_name} question {qid}")
    if q_img != a_img:
      raise UserError(f"question {qid} is on image {q_img} in {q_name} but on image {a_img} "
                      f"in {a_name}; the two files are not a pair.")
  return q_by_id, a_by_id


def human_answers(annotation: dict, where: str) -> tuple[str, ...]:
  """The raw answer strings of an annotation's `answers` list."""
  raw = _field(annotation, "answers", list, where)
  if not raw:
    raise UserError(f"{where}: 'answers' is empty; VQA annotations have 10 human answers.")
  return tuple(_field(x if isinstance(x, dict) else {}, "answer", str, f"{where} answers[{i}]")
               for i, x in enumerate(raw))


def _default_split(q_json, split: str | None) -> str | None:
  if split:
    return split
  subtype = q_json.get("data_subtype") if isinstance(q_json, dict) else None
  # test-dev questions ask about test2015 images (COCO_test2015_*.jpg).
  return "test2015" if subtype == "test-dev2015" else subtype


def read_vqa(questions, annotations, image_dir: str, *, split: str | None = None,
             check_images: bool = True) -> list[VQAExample]:
  """VQA v2 or VQA-CP v2 questions, joined with their annotations by question_id.

  Args:
    questions: `v2_OpenEnded_mscoco_<split>_questions.json` or
      `vqacp_v2_<train|test>_questions.json` (a path, or the loaded JSON).
    annotations: the matching annotations file (path or JSON), or None
      (test2015 has none).
    image_dir: the COCO images, either one split's folder or a folder holding
      one sub-folder per split (`train2014/`, `val2014/`: needed for VQA-CP).
      Image files are `COCO_<split>_<image_id:012d>.jpg`.
    split: the COCO split of the images ("train2014"); by default each
      entry's `coco_split` (VQA-CP) or the file's `data_subtype` (VQA v2).
    check_images: raise UserError when image files are missing.

  Returns:
    One VQAExample per question, in the questions file's order.
  """
  q_name = source_name(questions, "questions")
  q_json, q_list = load_vqa_json(questions, "questions")
  if annotations is None:
    q_by_id, a_by_id = index_by_question_id(q_list, q_name), {}
  else:
    q_by_id, a_by_id = join_vqa(q_list, load_vqa_json(annotations, "annotations")[1], q_name,
                                source_name(annotations, "annotations"))
  default_split = _default_split(q_json, split)
  folders: dict[str, str] = {}
  records = []
  for qid, q in q_by_id.items():
    where = f"{q_name} question {qid}"
    image_id = _field(q, "image_id", int, where)
    # VQA-CP v2 mixes train2014 and val2014 images and says which per entry.
    coco = split or q.get("coco_split") or default_split
    if not coco:
      raise UserError(f"cannot tell the COCO split of {where}: the file has no 'data_subtype' "
                      f"and the entry no 'coco_split'; pass split='val2014' (or the split "
                      f"whose images these are).")
    if coco not in folders:
      sub = os.path.join(image_dir, coco)
      folders[coco] = sub if _isdir(sub) else image_dir
    a = a_by_id.get(qid)
    records.append(VQAExample(
        question_id=qid, image_id=image_id, question=_field(q, "question", str, where),
        image_path=os.path.join(folders[coco], f"COCO_{coco}_{image_id:012d}.jpg"),
        answers=None if a is None else human_answers(a, f"{where} annotation"),
        multiple_choice_answer=None if a is None else a.get("multiple_choice_answer"),
        answer_type=None if a is None else a.get("answer_type"),
        question_type=None if a is None else a.get("question_type")))
  if check_images:
    check_files_exist(sorted({r.image_path for r in records}), f"COCO images under {image_dir!r}",
                      "download the COCO images of the split, or fix image_dir.")
  return records


# ---------------------------------------------------------------- SNLI-VE


@dataclasses.dataclass(frozen=True)
class SNLIVEExample:
  """One SNLI-VE pair: a Flickr30k image premise and a text hypothesis."""
  pair_id: str
  image_path: str
  hypothesis: str
  label: int          # SNLI_VE_LABELS

  @property
  def id(self) -> str:
    return self.pair_id


def read_snli_ve(path: str, image_dir: str, *, check_images: bool = True) -> list[SNLIVEExample]:
  """`snli_ve_{train,dev,test}.jsonl`; rows whose gold_label is "-" are dropped.

  Args:
    path: the JSONL file.
    image_dir: the Flickr30k images (`flickr30k_images/`).
    check_images: raise UserError when image files are missing.
  """
  records = []
  for n, row in _read_jsonl(path):
    where = f"{path!r} line {n}"
    gold = _field(row, "gold_label", str, where)
    if gold == "-":     # no annotator majority: SNLI's own convention for "no label"
      continue
    if gold not in SNLI_VE_LABELS:
      raise UserError(f"{where}: gold_label {gold!r} is not one of "
                      f"{sorted(SNLI_VE_LABELS)} (or '-' for unlabelled rows).")
    image = _field(row, "Flikr30kID", str, where)   # sic: the dataset's spelling
    # The distributed files name the image with its extension ("3416050480.jpg");
    # some re-distributions drop it.
    if not os.path.splitext(image)[1]:
      image += ".jpg"
    records.append(SNLIVEExample(
        pair_id=str(_field(row, "pairID", (str, int), where)),
        image_path=os.path.join(image_dir, image),
        hypothesis=_field(row, "sentence2", str, where),
        label=SNLI_VE_LABELS[gold]))
  if check_images:
    check_files_exist(sorted({r.image_path for r in records}),
                      f"Flickr30k images under {image_dir!r} named in {path!r}",
                      "download Flickr30k's images, or fix image_dir.")
  return records


# -------------------------------------------------------------------- VCR


@dataclasses.dataclass(frozen=True)
class VCRExample:
  """One VCR question with 4 answers and 4 rationales, object references as tags.

  Labels are None on the test split.
  """
  annot_id: str
  movie: str
  image_path: str
  metadata_path: str
  objects: tuple[str, ...]
  question: str
  answer_choices: tuple[str, ...]
  rationale_choices: tuple[str, ...]
  answer_label: int | None
  rationale_label: int | None

  @property
  def id(self) -> str:
    return self.annot_id


def object_tags(objects: Sequence[str]) -> list[str]:
  """Tag of each detected object: class name + 1-based count within its class.

  ["person", "person", "car"] -> ["person1", "person2", "car1"].
  """
  seen: dict[str, int] = {}
  tags = []
  for name in objects:
    seen[name] = seen.get(name, 0) + 1
    tags.append(f"{name}{seen[name]}")
  return tags


def render_tokens(tokens: Sequence, tags: Sequence[str], where: str) -> str:
  """A VCR token list as text: strings as they are, index lists as object tags.

  ["Why", "is", [0], "smiling", "?"] -> "Why is person1 smiling ?". A list of
  several objects reads "person1 and person2": a text encoder sees English,
  and this is how the questions' own wording refers to groups.

  Args:
    tokens: the field's tokens.
    tags: `object_tags(objects)` of the example.
    where: file and line, for the error message.
  """
  words = []
  for t in tokens:
    if isinstance(t, str):
      words.append(t)
      continue
    if not isinstance(t, list) or not t:
      raise UserError(f"{where}: token {t!r} is neither a string nor a list of object indices.")
    for i in t:
      if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(tags):
        raise UserError(f"{where}: object index {i!r} is out of range; the example has "
                        f"{len(tags)} objects (indices 0..{len(tags) - 1}).")
    words.append(" and ".join(tags[i] for i in t))
  return " ".join(words)


def _vcr_label(row: dict, key: str, where: str) -> int | None:
  if key not in row:
    return None
  label = _field(row, key, int, where)
  if not 0 <= label < VCR_NUM_CHOICES:
    raise UserError(f"{where}: {key} is {label}, expected 0..{VCR_NUM_CHOICES - 1}.")
  return label


def _check_tokens(x, key: str, where: str) -> list:
  if not isinstance(x, list):
    raise UserError(f"{where}: each of {key} should be a token list, got {x!r:.80}.")
  return x


def read_vcr(path: str, image_dir: str, *, check_images: bool = True) -> list[VCRExample]:
  """VCR's `{train,val,test}.jsonl`.

  Args:
    path: the JSONL file.
    image_dir: `vcr1images/`, which `img_fn` and `metadata_fn` are relative to.
    check_images: raise UserError when image or metadata files are missing.
  """
  records = []
  for n, row in _read_jsonl(path):
    where = f"{path!r} line {n}"
    objects = _field(row, "objects", list, where)
    tags = object_tags(objects)
    choices = {}
    for key in ("answer_choices", "rationale_choices"):
      c = _field(row, key, list, where)
      if len(c) != VCR_NUM_CHOICES:
        raise UserError(f"{where}: {key} has {len(c)} choices, expected {VCR_NUM_CHOICES}.")
      choices[key] = tuple(render_tokens(_check_tokens(x, key, where), tags, where) for x in c)
    records.append(VCRExample(
        annot_id=str(_field(row, "annot_id", (str, int), where)),
        movie=_field(row, "movie", str, where),
        image_path=os.path.join(image_dir, _field(row, "img_fn", str, where)),
        metadata_path=os.path.join(image_dir, _field(row, "metadata_fn", str, where)),
        objects=tuple(objects),
        question=render_tokens(_field(row, "question", list, where), tags, where),
        answer_choices=choices["answer_choices"],
        rationale_choices=choices["rationale_choices"],
        answer_label=_vcr_label(row, "answer_label", where),
        rationale_label=_vcr_label(row, "rationale_label", where)))
  if check_images:
    paths = sorted({p for r in records for p in (r.image_path, r.metadata_path)})
    check_files_exist(paths, f"VCR image/metadata files under {image_dir!r} named in {path!r}",
                      "unpack vcr1images.zip there, or fix image_dir.")
  return records


def vcr_boxes(example: VCRExample) -> np.ndarray:
  """The example's object boxes from its metadata JSON: [num_objects, 5] float32.

  Columns x1, y1, x2, y2, detector score; read on request (the metadata files
  also hold segmentation polygons, too large to keep for every example).
  """
  meta = read_json(example.metadata_path)
  boxes = np.asarray(meta.get("boxes", []) if isinstance(meta, dict) else [], np.float32)
  if boxes.shape != (len(example.objects), 5):
    raise UserError(f"metadata {example.metadata_path!r}: 'boxes' has shape {boxes.shape}, "
                    f"expected ({len(example.objects)}, 5) for the example's objects.")
  return boxes
