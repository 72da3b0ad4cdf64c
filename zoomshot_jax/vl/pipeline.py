"""tf.data pipelines of the VL tasks: reader records -> batches for the student.

Each host takes its contiguous share of a split's records (in process order,
as `data.Source.host_shard` does), keeps their fields as host columns (image
path, text, targets), and streams them through tf.data: the image is read,
decoded and resized on the fly (`data.preprocess_image`, "exact" to the
student's square side; uint8 leaves the host and `PreprocessSpec.normalize`
runs on device, as data/pipeline.py does), and the text is tokenised per batch
to a fixed `max_length` (the HF tokenizer in a `tf.py_function` after batching).

Batches (`vl_tasks` reads them):
  image                        uint8 [B, S, S, 3]
  input_ids, attention_mask,   int32 [B, L]; vcr [B, 4, L] (one sequence per
  token_type_ids               candidate: Q->A, or QA->R given the right answer)
  targets                      vqa: float32 [B, num_answers], vqa_eval.soft_targets
  label                        snli_ve [B] (readers.SNLI_VE_LABELS); vcr [B] in 0..3
Training VCR items are (example, mode) pairs: each example once as Q->A and
once as QA->R, the same head scoring both (vl_tasks). Evaluation VCR batches
hold both modes of each example: the QA->R inputs and label under an "r_"
prefix. Evaluation batches add `mask` (False on padding) and `index` (the
record's position in the split).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from zoomshot_jax import sharding
from zoomshot_jax.data import pipeline as data_pipeline
from zoomshot_jax.data.pipeline import preprocess_image
from zoomshot_jax.data.sources import contiguous_range
from zoomshot_jax.encoders.preprocessing import PreprocessSpec
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import vl_tasks
from zoomshot_jax.vl import vqa_eval

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# The steps of one training window's tf.data pipeline (TrainBatches): an epoch
# of the host's share, within these bounds. Each window builds a new pipeline
# (its first batches wait on decoding and tokenising): 200 low-shot VCR steps
# took 13 s of pipeline with 16-step windows, 9 s with 64.
_WINDOW_STEPS = (64, 512)
# A fast tokenizer with padding/truncation set is not safe to call from two
# threads at once ("Already borrowed"); tf.data may run two pipelines' maps.
_TOKENIZER_LOCK = threading.Lock()


def load_tokenizer(name: str, what: str = "config.data.tokenizer"):
  """An HF tokenizer (hub id or save_pretrained directory)."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  try:
    return AutoTokenizer.from_pretrained(name)
  except (OSError, ValueError) as e:
    raise UserError(f"{what}={name!r}: cannot load a tokenizer from it "
                    f"({str(e).splitlines()[0][:200]}); give a hub id such as "
                    "'bert-base-uncased' or a save_pretrained directory.") from e


def image_spec(image_size: int, mean: Sequence[float], std: Sequence[float]) -> PreprocessSpec:
  """Square resize to the student's side; mean/std applied on device."""
  return PreprocessSpec(resize=image_size, resize_mode="exact", crop=0, mean=tuple(mean),
                        std=tuple(std))


@dataclasses.dataclass(frozen=True)
class Inputs:
  """How a task's records become batches.

  answers: the VQA answer vocabulary (vqa_eval.build_answer_vocab); None otherwise.
  """
  task: str
  tokenizer: object
  max_length: int
  spec: PreprocessSpec
  answers: tuple[str, ...] | None = None
  # CLIP-TD's teacher text (vl/teacher.py): training batches then carry the
  # teacher's tokens, their alignment and the confidence prompts.
  teacher: object | None = None

  @property
  def num_answers(self) -> int:
    return len(self.answers or ())


# ------------------------------------------------------------------ columns


def host_share(records: Sequence, process_index: int, process_count: int) -> list:
  """This host's contiguous share of `records` (process order: the hosts'
  shares concatenated are the records)."""
  start, end = contiguous_range(len(records), process_index, process_count)
  return list(records[start:end])


def _strings(values) -> np.ndarray:
  return np.asarray(values, dtype=object)


def _vqa_targets(records, answers: Sequence[str]) -> dict[str, np.ndarray]:
  """Sparse soft targets: each question's in-vocabulary answers and scores
  [n, K] (K the most any question has; padding scores 0), dense on the fly."""
  index = {a: i for i, a in enumerate(answers)}
  rows = []
  for r in records:
    if r.answers is None:
      raise UserError(f"VQA question {r.question_id} has no annotation; training and "
                      "evaluation need the annotations file of the split.")
    t = vqa_eval.soft_targets(r.answers, index)
    nz = np.flatnonzero(t)
    rows.append((nz, t[nz]))
  k = max([1] + [len(nz) for nz, _ in rows])
  idx = np.zeros((len(rows), k), np.int32)
  score = np.zeros((len(rows), k), np.float32)
  for i, (nz, s) in enumerate(rows):
    idx[i, :len(nz)], score[i, :len(nz)] = nz, s
  return {"target_index": idx, "target_score": score}


def _vcr_label(r, key: str):
  label = getattr(r, key)
  if label is None:
    raise UserError(f"VCR example {r.annot_id} has no {key}; the test split has no labels, "
                    "train and evaluate on train / val.")
  return label


def _vcr_texts(records, mode: str) -> dict[str, np.ndarray]:
  pairs = [vl_tasks.vcr_example_pairs(r, mode) for r in records]
  return {"first": _strings([[a for a, _ in p] for p in pairs]).reshape(-1, vl_tasks.VCR_CHOICES),
          "second": _strings([[b for _, b in p] for p in pairs]).reshape(-1,
                                                                        vl_tasks.VCR_CHOICES)}


def columns(inputs: Inputs, records: Sequence, train: bool) -> dict[str, np.ndarray]:
  """The host-side fields of `records`, one row per example (training VCR:
  per (example, mode) item, Q->A rows then QA->R rows)."""
  task = inputs.task
  if task == "vqa":
    cols = {"first": _strings([r.question for r in records])}
    cols.update(_vqa_targets(records, inputs.answers))
  elif task == "snli_ve":
    cols = {"first": _strings([r.hypothesis for r in records]),
            "label": np.asarray([r.label for r in records], np.int32)}
  elif task == "vcr" and train:
    q2a, qa2r = _vcr_texts(records, "q2a"), _vcr_texts(records, "qa2r")
    labels = ([_vcr_label(r, "answer_label") for r in records]
              + [_vcr_label(r, "rationale_label") for r in records])
    cols = {k: np.concatenate([q2a[k], qa2r[k]]) for k in q2a}
    cols["label"] = np.asarray(labels, np.int32)
    cols["image_path"] = _strings([r.image_path for r in records] * 2)
    cols["index"] = np.concatenate([np.arange(len(records))] * 2).astype(np.int64)
    return cols
  elif task == "vcr":
    cols = {**_vcr_texts(records, "q2a"),
            **{"r_" + k: v for k, v in _vcr_texts(records, "qa2r").items()},
            "label": np.asarray([_vcr_label(r, "answer_label") for r in records], np.int32),
            "r_label": np.asarray([_vcr_label(r, "rationale_label") for r in records],
                                  np.int32)}
  else:
    raise UserError(f"task {task!r}: expected one of {list(vl_tasks.TASKS)}.")
  cols["image_path"] = _strings([r.image_path for r in records])
  cols["index"] = np.arange(len(records), dtype=np.int64)
  if task == "vqa" and inputs.teacher is not None:
    cols["td_gold"] = _gold(cols)
  return cols


def _gold(cols) -> np.ndarray:
  """int32 [n]: each question's highest-scoring answer (ties: the more
  frequent, lower index); -1 when none of its answers is in the vocabulary."""
  score, index = cols["target_score"], cols["target_index"]
  best = np.where(score == score.max(-1, keepdims=True), index, np.iinfo(np.int32).max).min(-1)
  return np.where(score.max(-1) > 0, best, -1).astype(np.int32)


# ----------------------------------------------------------------- tf.data


def _load_image(spec: PreprocessSpec, num_answers: int):
  def fn(ex):
    ex = dict(ex)
    raw = tf.io.read_file(ex.pop("image_path"))
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    ex["image"] = preprocess_image(image, spec)
    if "target_index" in ex:
      ex["targets"] = tf.tensor_scatter_nd_add(
          tf.zeros([num_answers], tf.float32), ex.pop("target_index")[:, None],
          ex.pop("target_score"))
    return ex
  return fn


def tokenize(tokenizer, first: Sequence[str], second: Sequence[str] | None,
             max_length: int) -> dict[str, np.ndarray]:
  """int32 [n, max_length] input_ids / attention_mask / token_type_ids of
  texts (or text pairs), padded and truncated (longest first)."""
  with _TOKENIZER_LOCK:
    enc = tokenizer(list(first), None if second is None else list(second),
                    padding="max_length", truncation=True, max_length=max_length,
                    return_token_type_ids=True, return_attention_mask=True,
                    return_tensors="np")
  return {k: np.asarray(enc[k], np.int32) for k in TEXT_KEYS}


def _decode(x: tf.Tensor) -> list[str]:
  return [s.decode("utf-8") for s in x.numpy().reshape(-1)]


def _tokenize_batch(inputs: Inputs, prefixes: Sequence[str]):
  """A batch map: the text columns under each prefix -> its token arrays."""
  length, tok = inputs.max_length, inputs.tokenizer
  fields = ("first", "second") if inputs.task == "vcr" else ("first",)

  def py(*texts):
    out = []
    for i in range(0, len(texts), len(fields)):
      first, second = texts[i], (texts[i + 1] if len(fields) == 2 else None)
      enc = tokenize(tok, _decode(first), None if second is None else _decode(second), length)
      out += [enc[k].reshape(tuple(first.shape) + (length,)) for k in TEXT_KEYS]
    return out

  def fn(batch):
    batch = dict(batch)
    texts = [batch.pop(p + f) for p in prefixes for f in fields]
    arrays = iter(tf.py_function(py, texts, [tf.int32] * (len(TEXT_KEYS) * len(prefixes))))
    for p, first in zip(prefixes, texts[::len(fields)]):
      for k in TEXT_KEYS:
        batch[p + k] = tf.ensure_shape(next(arrays), first.shape.concatenate([length]))
    return batch

  return fn


TEACHER_KEYS = ("t_input_ids", "t_attention_mask", "t_align")
CANDIDATE_KEYS = ("c_input_ids", "c_attention_mask", "c_label")


def teacher_keys(inputs: Inputs) -> tuple[str, ...]:
  if inputs.teacher is None:
    return ()
  return TEACHER_KEYS + (() if inputs.task == "vcr" else CANDIDATE_KEYS)


def _teacher_map(inputs: Inputs):
  """A batch map adding the teacher's text fields (before the student's
  tokenization pops the texts): see vl/teacher.py."""
  t, task, vcr = inputs.teacher, inputs.task, inputs.task == "vcr"
  keys = teacher_keys(inputs)

  def py(first, second, gold):
    f = _decode(first)
    with _TOKENIZER_LOCK:
      enc = t.encode(inputs.tokenizer, inputs.max_length, f, _decode(second) if vcr else None)
      if not vcr:
        enc.update(t.candidates(task, f, gold.numpy(), inputs.answers))
    lead = tuple(first.shape)
    return [enc[k].reshape(lead + enc[k].shape[1:]) if k.startswith("t_") else enc[k]
            for k in keys]

  def fn(batch):
    batch = dict(batch)
    first = batch["first"]
    # The right prompt: VQA's gold answer index, SNLI-VE's label; VCR has none
    # (its candidates are its sequences), any int tensor will do.
    gold = batch.pop("td_gold", None)
    if gold is None:
      gold = batch["label"]
    out = tf.py_function(py, [first, batch.get("second", first), gold], [tf.int32] * len(keys))
    lead = first.shape
    for k, v in zip(keys, out):
      if k.startswith("t_"):
        v = tf.ensure_shape(v, lead.concatenate([t.max_length]))
      elif k == "c_label":
        v = tf.ensure_shape(v, lead)
      else:
        v = tf.ensure_shape(v, lead.concatenate([None, t.max_length]))
      batch[k] = v
    return batch

  return fn


def _dataset(inputs: Inputs, cols: dict[str, np.ndarray], rows: np.ndarray,
             local_batch_size: int, mask: np.ndarray | None = None) -> tf.data.Dataset:
  """Batches of `cols` at `rows`, in that order (whole batches)."""
  sliced = {k: v[rows] for k, v in cols.items()}
  if mask is not None:
    sliced["mask"] = mask
  ds = tf.data.Dataset.from_tensor_slices(sliced)
  ds = ds.map(_load_image(inputs.spec, inputs.num_answers), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  prefixes = ("", "r_") if "r_first" in cols else ("",)
  if inputs.teacher is not None:
    ds = ds.map(_teacher_map(inputs))
  # Sequential: the tokenizer runs one batch at a time (_TOKENIZER_LOCK).
  ds = ds.map(_tokenize_batch(inputs, prefixes))
  return ds.prefetch(tf.data.AUTOTUNE)


def check_lengths(inputs: Inputs, cols: dict[str, np.ndarray], what: str,
                  sample: int = 2048) -> None:
  """Logs how many of (a sample of) the sequences fill max_length, i.e. may
  be truncated: a hint to raise config.data.max_length."""
  for prefix in ("", "r_"):
    if prefix + "first" not in cols:
      continue
    first = cols[prefix + "first"][:sample]
    second = cols.get(prefix + "second")
    enc = tokenize(inputs.tokenizer, list(first.reshape(-1)),
                   None if second is None else list(second[:sample].reshape(-1)),
                   inputs.max_length)
    full = float(np.mean(enc["attention_mask"][:, -1] == 1)) if len(first) else 0.0
    log = logging.warning if full > 0.01 else logging.info
    log("%s: %.1f%% of %d sampled %ssequences reach max_length=%d (truncated or exactly "
        "full).", what, 100 * full, len(enc["input_ids"]), prefix or "", inputs.max_length)


class TrainBatches:
  """Global training batches: `batches(step)`, a function of the step alone.

  This host's rows follow a stream of seeded epochs (a permutation of its
  share per epoch, seeded by (seed, host, epoch)); batch k is the stream's
  k-th run of local_batch_size rows. Shares smaller than a batch wrap into
  the next epoch, so the 0.1% low-shot subsets train with any batch size.
  The tf.data pipeline covers a window of steps; a resumed run starts a
  window at its step.
  """

  def __init__(self, inputs: Inputs, cols: dict[str, np.ndarray], batch_size: int, seed: int,
               mesh, what: str = "training examples", extra=None):
    # extra(rows) -> more numpy fields of those rows (vl/teacher_cache.py).
    self.inputs, self.cols, self.seed, self.extra = inputs, cols, seed, extra
    self.n = len(cols["index"])
    self.local_bs = sharding.local_batch_size(batch_size, mesh, "train.batch_size")
    if self.n == 0:
      raise UserError(f"this host (process {jax.process_index()} of {jax.process_count()}) "
                      f"has no {what}; use fewer hosts or more data.")
    lo, hi = _WINDOW_STEPS
    self.window = int(np.clip(math.ceil(self.n / self.local_bs), lo, hi))
    self._rows = sharding.batch_sharding(mesh)
    self._it, self._next, self._end, self._window = None, None, None, None
    self._what = what

  def _perm(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, jax.process_index(), epoch]).permutation(self.n)

  def rows(self, start_step: int, steps: int) -> np.ndarray:
    """This host's row indices for steps [start_step, start_step + steps)."""
    p0, p1 = start_step * self.local_bs, (start_step + steps) * self.local_bs
    e0, e1 = p0 // self.n, (p1 - 1) // self.n
    stream = np.concatenate([self._perm(e) for e in range(e0, e1 + 1)])
    return stream[p0 - e0 * self.n:p1 - e0 * self.n]

  def __call__(self, step: int) -> dict:
    if self._next != step or step >= self._end:
      self._window = self.rows(step, self.window)
      data_pipeline.close_later(self._it)
      self._it = data_pipeline.as_numpy(
          _dataset(self.inputs, self.cols, self._window, self.local_bs), self._what)
      self._end = step + self.window
    batch = next(self._it)
    self._next = step + 1
    keys = ("image", *TEXT_KEYS, "targets" if self.inputs.task == "vqa" else "label",
            *teacher_keys(self.inputs))
    batch = {k: batch[k] for k in keys}
    if self.extra is not None:
      lo = (step - self._end + self.window) * self.local_bs
      batch.update(self.extra(self._window[lo:lo + self.local_bs]))
    return sharding.to_global(batch, self._rows)


def eval_batches(inputs: Inputs, cols: dict[str, np.ndarray], local_batch_size: int,
                 agree_steps=lambda steps: steps, what: str = "evaluation examples"
                 ) -> tuple[Iterator[dict], int, int]:
  """Every row of this host's `cols` once, in order; the last batch padded
  (repeating the last row, `mask` False), and whole padding batches up to the
  step count all hosts agree on (`agree_steps`, e.g. sharding.host_max).

  Returns:
    (numpy batches, this host's example count, number of steps).
  """
  n = len(cols["index"])
  steps = agree_steps(math.ceil(n / local_batch_size))
  total = steps * local_batch_size
  if not n:
    # A host with no examples still runs the steps: any valid input will do.
    raise UserError(f"this host (process {jax.process_index()}) has no {what}; use fewer "
                    "hosts or more data.")
  rows = np.concatenate([np.arange(n), np.full(total - n, n - 1)])
  mask = np.arange(total) < n
  return data_pipeline.as_numpy(_dataset(inputs, cols, rows, local_batch_size, mask), what), n, steps
