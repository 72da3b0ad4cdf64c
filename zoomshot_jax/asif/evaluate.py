"""ASIF zero-shot evaluation: queries, relative representations, scores, explanations.

For each dataset, the images (queries) and the class×template prompts are
embedded once and, with their top-k rows, cached in the workdir
(`asif_reps/<dataset>.npz`). A later run against a store that has grown
(anchors appended) searches only the new anchors and merges them into the
cached rows, which equals a search from scratch (tests/test_asif_relative.py):
updating ASIF's anchor set is a data update, not training (METHODS.md §3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax

import numpy as np
import tensorflow as tf
from absl import logging

from zoomshot_jax import data, evaluation, io_utils, sharding
from zoomshot_jax.asif import embed, scoring
from zoomshot_jax.asif.relative import Searcher, TopK
from zoomshot_jax.asif.store import AnchorStore, encoder_info
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import results as results_lib
from zoomshot_jax.evaluation.classnames import Prompts

# noranta4/ASIF (embdatasets.py) prompts ImageNet with CLIP's 7 selected
# templates and Pets with 3 of its own; its CIFAR-100 templates are CLIP's
# 18, which are ours too. Picked with config.templates="reference".
REFERENCE_TEMPLATES = {
    "imagenet2012": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                     "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                     "a photo of the small {}."),
    "oxford_iiit_pet": ("a type of pet {}.", "a {} texture.", "{} , an animal."),
}


@dataclasses.dataclass
class Queries:
  """One dataset's queries: image features and labels, prompt features, top-k rows."""

  name: str
  prompts: Prompts
  image: np.ndarray                 # [n, m] L2-normalised
  labels: np.ndarray                # [n]
  text: np.ndarray                  # [K * J, t] L2-normalised, class-major
  topk: dict[str, TopK | None]      # {"image": ..., "text": ...}
  key: str                          # what the cached rows depend on


@dataclasses.dataclass
class AsifModel:
  """What the `asif_classification` evaluator evaluates: an anchor store, the
  two encoders that made it, and the method's fields (config.asif: k, p,
  rule, query_chunk, anchor_block, top_k, scoring, anchor_chunk, reuse_reps)."""

  store_dir: str
  image_encoder: Any
  text_encoder: Any
  method: Any


def get_prompts(config, name: str, source: data.Source) -> Prompts:
  prompts = evaluation.get_prompts(name, source.num_classes, source.label_names,
                                   config.classnames_file, config.templates_file)
  if config.templates == "reference" and name in REFERENCE_TEMPLATES and not config.templates_file:
    prompts = dataclasses.replace(prompts, templates=REFERENCE_TEMPLATES[name])
  return prompts


def _cache_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "asif_reps", results_lib.output_name(name) + ".npz")


def _load_cache(path: str, key: str) -> dict | None:
  if not tf.io.gfile.exists(path):
    return None
  cached = io_utils.load_npz(path)
  if str(cached["key"]) != key:
    logging.info("%s: cached rows are for other encoders/prompts/anchors; recomputing.", path)
    return None
  return cached


def load_queries(config, method, workdir: str, name: str, mesh, image_encoder, text_encoder,
                 store: AnchorStore) -> Queries:
  """Embeds a dataset's images and prompts, or reads them (and their rows) from the cache.

  Args:
    config: the evaluator's group (config.evals.<name>); method: config.asif.
  """
  split = (evaluation.DEFAULT_SPLITS.get(name, "test")
           if config.split == "default" else config.split)
  source = data.get_source(name, split, config.data_dir or None, config.tfds_download,
                           config.verify_images)
  prompts = get_prompts(config, name, source)
  m = store.manifest
  key = hashlib.sha256(json.dumps([
      m["store_id"], m["image_encoder"], m["text_encoder"], name, split, method.k,
      list(prompts.classnames), list(prompts.templates)]).encode()).hexdigest()
  cached = _load_cache(_cache_path(workdir, name), key) if method.reuse_reps else None
  n = int(cached["num_anchors"]) if cached is not None else -1
  # Every host must take the same path (the search is collective): the cache
  # is used only if all hosts read the same one (a host-local workdir may not).
  lowest, highest = -sharding.host_max(-n), sharding.host_max(n)  # on every host
  if lowest != highest or n > store.num_anchors:
    n = -1
  if n >= 0:
    logging.info("%s: cached queries and rows over %d anchors.", name, n)
    topk = {kind: TopK(cached[f"{kind}_sims"], cached[f"{kind}_idx"], n)
            for kind in ("image", "text")}
    return Queries(name, prompts, cached["image"], cached["labels"], cached["text"], topk, key)
  image, labels = embed.embed_split(image_encoder, source, mesh, config.batch_size)
  text = embed.embed_texts(text_encoder, prompts.texts(), config.text_batch_size,
                           sharding.local_mesh())
  logging.info("%s: %d images, %d prompts embedded.", name, len(image), len(text))
  return Queries(name, prompts, image, labels, text, {"image": None, "text": None}, key)


def search_all(queries: list[Queries], searcher: Searcher, store: AnchorStore,
               chunk_size: int) -> None:
  """Brings every query's top-k rows up to all the store's anchors, in place.

  Datasets whose rows start at the same anchor share one pass over the anchors.
  """
  n = store.num_anchors
  for kind in ("image", "text"):
    groups: dict[int, list[Queries]] = {}
    for q in queries:
      start = q.topk[kind].num_anchors if q.topk[kind] is not None else 0
      if start < n:
        groups.setdefault(start, []).append(q)
    for start, qs in groups.items():
      rows = np.concatenate([getattr(q, kind) for q in qs])
      prior = None
      if start:
        prior = TopK(np.concatenate([q.topk[kind].sims for q in qs]),
                     np.concatenate([q.topk[kind].idx for q in qs]), start)
      logging.info("Searching %d %s rows over anchors [%d, %d)%s.", len(rows), kind, start, n,
                   f" in chunks of {chunk_size}" if chunk_size else "")
      res = searcher.search(rows, store.chunks(searcher, kind, start, chunk_size), prior)
      lo = 0
      for q in qs:
        hi = lo + len(getattr(q, kind))
        q.topk[kind] = TopK(res.sims[lo:hi], res.idx[lo:hi], res.num_anchors)
        lo = hi


def save_cache(workdir: str, q: Queries) -> None:
  io_utils.atomic_save_npz(
      _cache_path(workdir, q.name), key=np.asarray(q.key), image=q.image, labels=q.labels,
      text=q.text, num_anchors=np.asarray(q.topk["image"].num_anchors),
      **{f"{kind}_{f}": getattr(q.topk[kind], f) for kind in ("image", "text")
         for f in ("sims", "idx")})


def metrics(class_scores: np.ndarray, labels: np.ndarray) -> dict:
  """top1/top5 in percent (top-min(5, K)); ties go to the lower class index."""
  k = min(5, class_scores.shape[1])
  order = np.argsort(-class_scores, axis=1, kind="stable")[:, :k]
  n = len(labels)
  return {"top1": 100.0 * float(np.mean(order[:, 0] == labels)) if n else 0.0,
          "top5": 100.0 * float(np.mean((order == labels[:, None]).any(1))) if n else 0.0,
          "num_examples": int(n)}


def score(q: Queries, mesh, p: float, rule: str,
          impl: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """(prompt scores [n, K * J], class scores [n, K]) of a dataset's images."""
  scorer = scoring.Scorer(mesh, scoring.index_text(q.topk["text"], p), impl)
  prompt_scores = scorer.scores(q.topk["image"], p)
  return prompt_scores, scoring.class_scores(prompt_scores, len(q.prompts.templates), rule)


def explanations(q: Queries, prompt_scores: np.ndarray, class_scores: np.ndarray,
                 store: AnchorStore, p: float, count: int, top: int = 10) -> list[dict]:
  """For the first `count` images: the prediction and the anchor pairs behind it.

  The explained prompt is the predicted class's best-scoring template.
  """
  out, j, texts = [], len(q.prompts.templates), q.prompts.texts()
  for row in range(min(count, len(q.labels))):
    cls = int(np.argmax(class_scores[row]))
    prompt = cls * j + int(np.argmax(prompt_scores[row, cls * j:(cls + 1) * j]))
    contrib = scoring.explain(q.topk["image"], row, q.topk["text"], prompt, p, top)
    total = float(prompt_scores[row, prompt])
    captions = store.captions([a for a, _ in contrib])
    out.append({
        "example": row, "label": int(q.labels[row]), "predicted": cls,
        "prompt": texts[prompt], "score": total,
        "anchors": [{"index": a, "caption": c, "contribution": v,
                     "share": v / total if total else 0.0}
                    for (a, v), c in zip(contrib, captions)]})
  return out


def check_k(k: int, store: AnchorStore) -> None:
  if k > store.num_anchors:
    raise UserError(f"k={k} is larger than the number of anchors in {store.path!r} "
                    f"({store.num_anchors}); set --config.asif.k to at most {store.num_anchors} "
                    "or add anchors.")


def classification(cfg, model: AsifModel, mesh, workdir: str | None = None,
                   name: str = "asif") -> dict[str, dict]:
  """The `asif_classification` evaluator: zero-shot top-1/top-5 of every dataset
  of `cfg.datasets` against the anchor store (all datasets share each pass
  over the anchors); writes the rows cache, and with cfg.save_predictions /
  cfg.explain the class scores and the anchors behind the first predictions."""
  from zoomshot_jax.evaluation import registry  # pylint: disable=g-import-not-at-top
  m = model.method
  store = AnchorStore.open(model.store_dir)
  store.check_complete()
  store.check_encoders(encoder_info(model.image_encoder, "image"),
                       encoder_info(model.text_encoder, "text"))
  check_k(m.k, store)
  names = registry.datasets(cfg, name)
  workdir = workdir or ""
  searcher = Searcher(mesh, m.k, m.query_chunk, m.anchor_block, m.top_k)
  queries = [load_queries(cfg, m, workdir, d, mesh, model.image_encoder, model.text_encoder,
                          store) for d in names]
  search_all(queries, searcher, store, m.anchor_chunk)
  results, main = {}, jax.process_index() == 0
  for q in queries:
    if main:
      save_cache(workdir, q)
    prompt_scores, class_scores = score(q, mesh, m.p, m.rule, m.scoring)
    results[q.name] = metrics(class_scores, q.labels)
    logging.info("%s: %s", q.name, results[q.name])
    if main and cfg.save_predictions:
      io_utils.atomic_save_npz(results_lib.predictions_path(workdir, q.name),
                               labels=q.labels, logits=class_scores)
    if main and cfg.explain:
      path = os.path.join(workdir, "explanations", results_lib.output_name(q.name) + ".json")
      io_utils.atomic_write_json(path, explanations(q, prompt_scores, class_scores, store, m.p,
                                                    cfg.explain))
  return results
