"""ASIF: training-free zero-shot classification from unimodal encoders and anchor pairs.

METHODS.md §3 and docs/asif.md. Stages (config.stage, comma-separated, run in
this order):

  embed-anchors  embed anchors.source (image–caption pairs) with the image and
                 text encoders into the anchor store (anchors_dir); resumable,
                 and with anchors.append=True a new source is added after the
                 anchors already there
  evaluate       the evaluators of config.evals (asif_classification: zero-shot
                 top-1/top-5 of config.evals.asif.datasets against the store)

Writes into the workdir:
  config.json                  the config, as run
  results.json                 {dataset: {"top1", "top5" (percent), "num_examples"}}
  events.out.tfevents.*        TensorBoard scalars <dataset>/top1, <dataset>/top5
  asif_reps/<dataset>.npz      queries and their top-k rows (reused when anchors are added)
  predictions/<dataset>.npz    with save_predictions: `labels` [n], `logits` [n, K] (class scores)
  explanations/<dataset>.json  with explain=N: the anchors behind the first N predictions
  anchors/                     the anchor store, unless anchors_dir points elsewhere
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from zoomshot_jax import encoders, io_utils, sharding
from zoomshot_jax.asif import embed, relative, scoring
from zoomshot_jax.asif.evaluate import AsifModel
from zoomshot_jax.asif.sources import get_anchor_source
from zoomshot_jax.asif.store import AnchorStore
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import registry
from zoomshot_jax.evaluation import results as results_lib

STAGES = ("embed-anchors", "evaluate")


def parse_stages(spec: str) -> list[str]:
  stages = [s.strip() for s in spec.split(",") if s.strip()]
  bad = [s for s in stages if s not in STAGES]
  if bad or not stages:
    raise UserError(f"config.stage={spec!r}: give one or both of {list(STAGES)}, "
                    "comma-separated.")
  return [s for s in STAGES if s in stages]


def _check(config) -> None:
  a = config.asif
  if a.rule not in scoring.RULES:
    raise UserError(f"config.asif.rule={a.rule!r} is not one of {list(scoring.RULES)}.")
  if a.p <= 0:
    raise UserError(f"config.asif.p={a.p} must be positive (the paper uses 8).")
  if a.anchor_chunk < 0:
    raise UserError(f"config.asif.anchor_chunk={a.anchor_chunk} must be >= 0 "
                    "(0: all anchors in device memory).")
  for field, allowed in (("top_k", relative.TOP_K), ("scoring", scoring.IMPLS)):
    if a[field] not in allowed:
      raise UserError(f"config.asif.{field}={a[field]!r} is not one of {list(allowed)} "
                      "(auto: host on CPU devices, xla elsewhere).")
  registry.check(config.evals)
  for name, e in config.evals.items():
    if e.get("templates", "default") not in ("reference", "default"):
      raise UserError(f"config.evals.{name}.templates={e.templates!r}: use 'reference' "
                      "(noranta4/ASIF's templates where it has its own) or 'default' (the "
                      "evaluator's).")


def load_encoders(config):
  image = encoders.load_vision_encoder(
      config.image_encoder.name, config.image_encoder.checkpoint, config.image_encoder.pooling,
      config.dtype, random_init=config.random_init)
  text = encoders.load_text_encoder(
      config.text_encoder.name, config.text_encoder.checkpoint, config.text_encoder.pooling,
      config.dtype, random_init=config.random_init, max_length=config.text_encoder.max_length)
  logging.info("ASIF encoders: image %s %s (%s, dim %d), text %s %s (%s, dim %d).",
               image.name, image.checkpoint, image.pooling, image.dim, text.name,
               text.checkpoint, text.pooling, text.dim)
  return image, text


def open_source(config, store_dir: str):
  """The anchor source of config.anchors (checked before any encoder is loaded)."""
  a = config.anchors
  known = {}
  if AnchorStore.exists(store_dir):  # reuse the counts made when the part was started
    known = next((p["options"] for p in AnchorStore.open(store_dir).parts
                  if p["source"] == a.source), {})
  source = get_anchor_source(a.source, a.image_key, a.caption_key, a.split,
                             config.data_dir or None, a.max_anchors, a.verify_files, known)
  logging.info("Anchors %s: %d pairs.", a.source, source.num_examples)
  return source


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  stages = parse_stages(config.stage)
  _check(config)
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  mesh = sharding.make_mesh(config.mesh)
  store_dir = config.anchors_dir or os.path.join(workdir, "anchors")
  source = open_source(config, store_dir) if "embed-anchors" in stages else None
  image_encoder, text_encoder = load_encoders(config)
  if source is not None:
    a = config.anchors
    embed.embed_anchors(store_dir, source, image_encoder, text_encoder, a.shard_size,
                        a.batch_size, a.text_batch_size, a.append)
  if "evaluate" not in stages:
    return {}
  model = AsifModel(store_dir, image_encoder, text_encoder, config.asif)
  results = registry.run(config.evals, model, mesh, workdir)
  results_lib.write_results(workdir, {"": results})
  return results
