"""CLIP-TD's teacher outputs, computed once per training row instead of every step.

The VL training pipeline has no augmentation: a row's image and texts are the
same in every epoch, and so are the frozen teacher's outputs on them. A 1%
low-shot run repeats each row about a hundred times (train.min_steps), so
there the teacher's forward pass — most of CLIP-TD's step — is paid once per
row rather than once per use. When the outputs of this host's rows fit in
config.distill.teacher_cache_gb, `build` runs the teacher over them in one
pass on this host's devices (no collective: each host caches its own share)
and the step reads the rows it draws (pipeline.TrainBatches' `extra`);
otherwise the teacher runs in the step. Both give the loss the same values
up to float rounding (the same jitted functions, other batch shapes).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zoomshot_jax.methods import clip_td, vl_tasks
from zoomshot_jax.vl import pipeline

# The teacher fields of a row the loss also reads; cached with the outputs.
_ROW_FIELDS = ("t_align", "t_attention_mask")


def row_bytes(teacher, teacher_text, task: str) -> int:
  """Bytes of one cached row: float32 outputs, int32 alignment and mask."""
  patches, d, length = teacher.grid ** 2, teacher.dim, teacher_text.max_length
  seqs = vl_tasks.VCR_CHOICES if task == "vcr" else 1
  return 4 * (patches * (d + 1) + seqs * length * (d + 3) + 1)


def build(teacher, inputs: pipeline.Inputs, cols: dict[str, np.ndarray], batch_size: int,
          budget_gb: float) -> dict[str, np.ndarray] | None:
  """{field: [n, ...]} of this host's training rows `cols` (in row order),
  or None (the teacher runs in the step) when they need more than budget_gb.

  inputs: the training Inputs, with the teacher's text side; batch_size: rows
  per pass (a multiple of this host's device count)."""
  n = len(cols["index"])
  need = n * row_bytes(teacher, inputs.teacher, inputs.task)
  if need > budget_gb * 2**30:
    logging.info("CLIP-TD: the teacher runs in the step (caching its outputs on %d rows "
                 "would take %.2f GB > config.distill.teacher_cache_gb=%s).", n, need / 2**30,
                 budget_gb)
    return None
  start = time.time()
  mesh = Mesh(np.array(jax.local_devices()), ("data",))
  rows, same = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
  params = jax.device_put(teacher.clip.params, same)
  vcr = inputs.task == "vcr"
  fn = jax.jit(lambda cp, b: clip_td.teacher_outputs(teacher, cp, b, vcr),
               in_shardings=(same, rows), out_shardings=rows)
  keys = pipeline.teacher_keys(inputs)
  parts: dict[str, list] = {k: [] for k in clip_td.TEACHER_OUTPUTS + _ROW_FIELDS}
  batches, _, _ = pipeline.eval_batches(inputs, cols, batch_size, what="training examples")
  for batch in batches:
    fields = {"teacher_image": batch["image"], **{k: batch[k] for k in keys}}
    if vcr:
      fields["label"] = batch["label"]
    out = jax.device_get(fn(params, fields))
    for k in clip_td.TEACHER_OUTPUTS:
      parts[k].append(np.asarray(out[k]))
    for k in _ROW_FIELDS:
      parts[k].append(batch[k])
  cache = {k: np.concatenate(v)[:n] for k, v in parts.items()}
  logging.info("CLIP-TD: cached the teacher's outputs on %d rows (%.1f MB) in %.1f s.", n,
               need / 2**20, time.time() - start)
  return cache


def lookup(cache: dict[str, np.ndarray]):
  """TrainBatches' `extra`: the cached fields of a step's rows."""
  return lambda rows: {k: v[rows] for k, v in cache.items()}
