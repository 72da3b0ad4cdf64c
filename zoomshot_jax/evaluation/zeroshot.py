"""Sharded zero-shot classification of a labelled split.

logits(z) = s * norm(z) W^T (METHODS.md). Any image-feature function into
CLIP space can be evaluated: CLIP itself, or a vision encoder followed by a
learnt map (Zoom-shot, Text-to-Concept). Counts are exact under padding: the
pipeline pads and masks the last batch, and every host runs the same number of
steps, so each example counts once on any number of devices and hosts.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from zoomshot_jax import console, data, sharding
from zoomshot_jax.encoders.preprocessing import PreprocessSpec
from zoomshot_jax.ops import l2_normalize


@dataclasses.dataclass
class EvalResult:
  top1: float          # percent
  top5: float          # percent (top-k with k = min(5, K))
  num_examples: int
  labels: np.ndarray | None = None   # [n] int32, with keep_logits
  logits: np.ndarray | None = None   # [n, K] float32, with keep_logits

  def as_dict(self) -> dict:
    return {"top1": self.top1, "top5": self.top5, "num_examples": self.num_examples}


def zero_shot_logits(features, classifier, logit_scale):
  """[B, d] features, [K, d] W -> [B, K] float32 logits s * norm(z) W^T."""
  z = l2_normalize(features.astype(jnp.float32))
  return logit_scale * jnp.einsum("bd,kd->bk", z, classifier,
                                  precision=jax.lax.Precision.HIGHEST)


def _make_step(feature_fn, logit_scale: float, k: int, mesh: Mesh):
  rows = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)

  @functools.partial(jax.jit, in_shardings=(rep, rep, rows, rows, rows),
                     out_shardings=(rep, rows))
  def step(variables, classifier, images, labels, mask):
    logits = zero_shot_logits(feature_fn(variables, images), classifier, logit_scale)
    top1 = jnp.argmax(logits, axis=-1) == labels
    _, topk = jax.lax.top_k(logits, k)
    topk = jnp.any(topk == labels[:, None], axis=-1)
    counts = {"top1": jnp.sum(top1 & mask), "topk": jnp.sum(topk & mask),
              "n": jnp.sum(mask)}
    return jax.tree.map(lambda c: c.astype(jnp.int32), counts), logits

  return step


def evaluate(feature_fn: Callable[[Any, jax.Array], jax.Array], variables,
             preprocess: PreprocessSpec, classifier: np.ndarray, logit_scale: float,
             source: data.Source, mesh: Mesh, batch_size: int,
             keep_logits: bool = False, log_every_s: float = 30.0) -> EvalResult:
  """Zero-shot top-1/top-5 of `feature_fn` on every example of `source`.

  Args:
    feature_fn: (variables, uint8 images [B, S, S, 3]) -> [B, d] features in
      CLIP space; pure and jit-able.
    classifier: W [K, d], rows L2-normalised.
    batch_size: global batch size (a multiple of the mesh size).
    keep_logits: also return every example's logits and label, in the
      dataset's order, gathered from all hosts.
  """
  pi, pc = jax.process_index(), jax.process_count()
  local_bs = sharding.local_batch_size(batch_size, mesh)
  ds, _, num_steps = data.eval_batches(source, {"image": preprocess}, local_bs, pi, pc,
                                       agree_steps=sharding.host_max)
  num_classes = classifier.shape[0]
  step = _make_step(feature_fn, logit_scale, min(5, num_classes), mesh)
  # Kept as they are if already replicated: callers place parameters once.
  variables = sharding.replicate(variables, mesh)
  w = sharding.replicate(jnp.asarray(classifier, jnp.float32), mesh)
  rows = sharding.batch_sharding(mesh)
  totals = None
  kept = {"logits": [], "labels": [], "mask": []}
  start = last_log = time.time()
  for i, batch in enumerate(data.as_numpy(ds, f"dataset {source.name!r}")):
    g = sharding.to_global({k: batch[k] for k in ("image", "label", "mask")}, rows)
    counts, logits = step(variables, w, g["image"], g["label"], g["mask"])
    if totals is not None:
      # One step in flight at most: a bounded queue (see classifier.encode_texts).
      totals["n"].block_until_ready()
    totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    if keep_logits:
      kept["logits"].append(sharding.local_rows(logits))
      kept["labels"].append(batch["label"])
      kept["mask"].append(batch["mask"])
    if time.time() - last_log > log_every_s:
      last_log = time.time()
      rate = (i + 1) / (last_log - start)
      console.progress(f"evaluate {source.name}", i + 1, num_steps, (num_steps - i - 1) / rate,
                       f"{rate:.1f} steps/s")
  totals = jax.device_get(totals)
  n = int(totals["n"])
  result = EvalResult(top1=100.0 * int(totals["top1"]) / max(n, 1),
                      top5=100.0 * int(totals["topk"]) / max(n, 1), num_examples=n)
  if keep_logits:
    mask = np.concatenate(kept.pop("mask"))
    kept = sharding.gather_rows({k: np.concatenate(v) for k, v in kept.items()}, mask)
    result.logits, result.labels = kept["logits"], kept["labels"]  # the dataset's order
  logging.info("%s: top1 %.2f%% top5 %.2f%% on %d examples (%.1fs).", source.name,
               result.top1, result.top5, n, time.time() - start)
  return result
