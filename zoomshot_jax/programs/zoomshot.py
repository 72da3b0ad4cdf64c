"""Zoom-shot and Text-to-Concept: extract features, train the maps, evaluate.

  python -m zoomshot_jax.main --config=configs/zoomshot.py:dinov2_b14,b32 --workdir=DIR

`config.stages` picks any of:
  extract  encode the training subset (and held-out images) with both frozen
           encoders into a sharded feature cache (resumable shard by shard);
  train    fit the maps (cached features, or online from images), with Orbax
           checkpoints and resume, then export <workdir>/export/mapping.npz;
  eval     the evaluators of config.evals (zero-shot classification) on
           vision encoder + h in CLIP space (and, with reference_clip, on
           CLIP itself), into results.json.

Workdir: config.json, features/ (default cache), checkpoints/, export/,
results.json {method or "clip": {dataset: {top1, top5, num_examples}}},
TensorBoard scalars (each loss term, held-out R² and agreement, samples/s).
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from zoomshot_jax import data, encoders, evaluation, io_utils, methods, sharding, training
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import heldout as heldout_metrics
from zoomshot_jax.evaluation import registry
from zoomshot_jax.evaluation.classifier import cache_key, encode_texts
from zoomshot_jax.evaluation.results import write_results
from zoomshot_jax.methods import artifact, linear, losses, ridge
from zoomshot_jax.methods import zoomshot as zoomshot_method
from zoomshot_jax.training import features

STAGES = ("extract", "train", "eval")


def parse_stages(spec: str) -> list[str]:
  stages = [s.strip() for s in spec.split(",") if s.strip()]
  bad = [s for s in stages if s not in STAGES]
  if bad or not stages:
    raise UserError(f"config.stages={spec!r}: expected a comma-separated subset of "
                    f"{','.join(STAGES)}.")
  return stages


def validate(config) -> None:
  """Refuses contradictory settings before anything heavy runs."""
  z, f = config.zoomshot, config.features
  if z.method not in methods.METHODS:
    raise UserError(f"config.zoomshot.method={z.method!r}: expected one of "
                    f"{sorted(methods.METHODS)}.")
  method = methods.METHODS[z.method]
  weights = dict(z.loss)
  unknown = [k for k in weights if k not in method.TERMS]
  if unknown:
    raise UserError(f"config.zoomshot.loss has terms {unknown} that {z.method} does not "
                    f"have; its terms are {list(method.TERMS)}.")
  if not any(weights.values()) and z.solver != "closed_form":
    raise UserError("config.zoomshot.loss: every term has weight 0; nothing would be trained.")
  if not z.paired:
    needy = [k for k in losses.PAIRED_TERMS if weights.get(k)]
    if needy or z.method == "text_to_concept":
      fix = (" ".join("--config.zoomshot.loss." + k + "=0" for k in needy)
             or "--config.zoomshot.method=zoomshot")
      raise UserError(
          f"config.zoomshot.paired=False, but "
          f"{'loss term(s) ' + ', '.join(needy) if needy else 'text_to_concept'} need the two "
          f"encoders to see the same images. Set {fix}, or --config.zoomshot.paired=True.")
  for group, field, allowed in (
      ("zoomshot", "pgkd_mode", ("kl", "hard_ce")), ("features", "mode", ("cached", "online")),
      ("zoomshot", "solver", ("sgd", "closed_form")), ("zoomshot", "init", ("random", "ridge")),
      ("features", "dtype", ("float16", "float32"))):
    if config[group][field] not in allowed:
      raise UserError(f"config.{group}.{field}={config[group][field]!r}: expected one of "
                      f"{list(allowed)}.")
  if z.solver == "closed_form" and z.method != "text_to_concept":
    raise UserError("config.zoomshot.solver='closed_form' is Text-to-Concept's exact solver; "
                    "for Zoom-shot use --config.zoomshot.init=ridge to start from it.")
  if f.mode == "online" and (z.init == "ridge" or z.solver == "closed_form"):
    raise UserError("the closed-form solver needs cached features; set "
                    "--config.features.mode=cached.")
  if f.mode == "online" and config.data.heldout_examples <= 0:
    raise UserError("config.features.mode='online' takes the alignment scales from the "
                    "held-out images; set config.data.heldout_examples > 0 (e.g. 10000).")
  if config.train.epochs <= 0:
    raise UserError(f"config.train.epochs={config.train.epochs} must be positive.")
  data.pipeline.memory_bytes(config.data.in_memory_gb, "data.in_memory_gb")
  registry.check(config.evals)


def _prompt_embeddings(clip, prompts, config) -> tuple[np.ndarray, np.ndarray]:
  """(every prompt's unit embedding [K*J, d], classifier W [K, d]), cached on disk."""
  cache = registry.resolve_cache_dir(config.zoomshot.prompts.cache_dir)
  path = cache and os.path.join(cache, "prompts", cache_key(clip, prompts) + ".npy")
  k, j = len(prompts.classnames), len(prompts.templates)
  t = None
  if path and tf.io.gfile.exists(path):
    t = io_utils.load_npy(path)
    t = t if t.shape == (k * j, clip.dim) else None
  if t is None:
    t = encode_texts(clip, prompts.texts(), config.zoomshot.prompts.batch_size)
    if path:
      io_utils.atomic_save_npy(path, t)
  w = t.reshape(k, j, -1).mean(axis=1)
  w /= np.linalg.norm(w, axis=-1, keepdims=True)
  return t, w.astype(np.float32)


class Run:
  """One run's encoders, data selection and paths (what every stage shares)."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.mesh = sharding.make_mesh(config.mesh)
    self.clip = encoders.load_clip(config.clip, config.dtype, config.random_init, seed=0)
    v = config.vision
    self.vision = encoders.load_vision_encoder(v.name, v.checkpoint, v.pooling, config.dtype,
                                               config.random_init, seed=1)
    logging.info("Vision %s:%s (%s pooling, m=%d) -> CLIP %s (d=%d); %d devices.", v.name,
                 v.checkpoint, self.vision.pooling, self.vision.dim, config.clip, self.clip.dim,
                 self.mesh.devices.size)
    self.identity = features.encoder_identity(self.vision, self.clip)
    self.cache_dir = config.features.cache_dir or os.path.join(workdir, "features")
    self.export_path = os.path.join(workdir, "export", "mapping.npz")

  @functools.cached_property
  def source(self) -> data.Source:
    c = self.config
    return data.get_source(c.data.dataset, c.data.split, c.data_dir or None,
                           c.tfds_download, c.verify_images)

  @functools.cached_property
  def _indices(self):
    """(train, held-out) example indices: a permutation of the split, drawn once."""
    d = self.config.data
    return features.select_examples(self.source.size(), d.train_fraction,
                                    d.heldout_examples, self.config.seed)

  def num_heldout(self) -> int:
    return len(self._indices[1])

  def parts(self) -> dict[str, data.Source]:
    """{"train": the seeded train_fraction subset, "heldout": disjoint held-out images}."""
    d = self.config.data
    train_idx, held_idx = self._indices
    logging.info("%s/%s: %d training and %d held-out images.", d.dataset, d.split,
                 len(train_idx), len(held_idx))
    return {"train": self.source.subset(train_idx, f"{d.dataset} train subset"),
            "heldout": self.source.subset(held_idx, f"{d.dataset} held-out")}

  def description(self, part: str) -> dict:
    c = self.config.data
    d = {"dataset": c.dataset, "split": c.split, "part": part,
         "train_fraction": c.train_fraction, "seed": self.config.seed}
    if part == "heldout":  # the training subset does not depend on it
      d["heldout_examples"] = c.heldout_examples
    return d

  def prompts(self):
    p = self.config.zoomshot.prompts
    return evaluation.get_prompts(self.config.data.dataset, self.source.num_classes,
                                  self.source.label_names, p.classnames_file, p.templates_file)


def extract(run: Run) -> None:
  f = run.config.features
  parts = run.parts()
  wanted = ["heldout"] + (["train"] if f.mode == "cached" else [])
  for part in wanted:
    if not parts[part].size():
      continue
    features.extract(parts[part], run.vision, run.clip, run.mesh,
                     os.path.join(run.cache_dir, part), run.description(part),
                     f.batch_size, f.shard_size, f.dtype, run.identity)


def _load_part(run: Run, part: str) -> dict[str, np.ndarray]:
  return features.load(os.path.join(run.cache_dir, part), run.identity)


def train(run: Run, hooks=()) -> dict:
  """Fits the maps and exports them; returns the artifact's metadata."""
  c, z = run.config, run.config.zoomshot
  cached = c.features.mode == "cached"
  has_heldout = run.num_heldout() > 0
  held = _load_part(run, "heldout") if has_heldout else None
  train_feats = _load_part(run, "train") if cached else None
  # Variance alignment (METHODS.md §1) from the training features; online
  # mode has none cached and uses the held-out images' (ours).
  stats_from = train_feats if cached else held
  mv, mc = features.moments(stats_from["vision"]), features.moments(stats_from["clip"])
  cv = linear.alignment_scale(mv["sum"], mv["sumsq"], mv["entries"])
  ci = linear.alignment_scale(mc["sum"], mc["sumsq"], mc["entries"])
  class_norm = linear.rms_norm(mc["sumsq"], mc["rows"], ci)
  logging.info("Alignment scales: vision %.4g, clip %.4g.", cv, ci)
  text, classes = _prompt_embeddings(run.clip, run.prompts(), c)
  evaluate = heldout_metrics.map_evaluator(held["vision"], held["clip"], cv, ci, classes,
                                           run.clip.logit_scale, run.mesh) if has_heldout else None

  if z.solver == "closed_form":
    params = {"h": ridge.fit_arrays(train_feats["vision"].astype(np.float32) * cv,
                                    train_feats["clip"].astype(np.float32) * ci, run.mesh,
                                    z.ridge_weight_decay)}
    step = 0
  else:
    params, step = _train_sgd(run, train_feats, cv, ci, class_norm, text, classes, evaluate,
                              hooks)
  heldout = evaluate(params) if evaluate else {}
  if heldout:
    logging.info("Held-out: R² %.4f, agreement with CLIP %.4f.", heldout["heldout/r2"],
                 heldout["heldout/agreement"])
  maps = {name: linear.fold(p, *((cv, ci) if name == "h" else (ci, cv)))
          for name, p in jax.device_get(params).items()}
  meta = {"method": z.method, "vision": run.identity["vision"], "clip": {
      **run.identity["clip"], "logit_scale": run.clip.logit_scale},
          "scales": {"vision": cv, "clip": ci},
          "train": {**run.description("train"), "epochs": c.train.epochs, "steps": step,
                    "solver": z.solver},
          "heldout": {k.split("/")[1]: v for k, v in heldout.items()}}
  if jax.process_index() == 0:
    artifact.save(run.export_path, maps, meta)
    logging.info("Exported %s.", run.export_path)
  # Other hosts read the export in the eval stage: not before it exists.
  multihost_utils.sync_global_devices("zoomshot-export")
  return meta


def _train_sgd(run, train_feats, cv, ci, class_norm, text, classes, evaluate, hooks):
  c, z, t = run.config, run.config.zoomshot, run.config.train
  mesh = run.mesh
  method = methods.METHODS[z.method]
  if train_feats is not None:
    batches = training.ArrayBatches(
        {"vision": train_feats["vision"], "clip": train_feats["clip"]}, t.batch_size, c.seed,
        mesh, groups=None if z.paired else [["vision"], ["clip"]],
        what="cached training examples (raise config.data.train_fraction)",
        field="train.batch_size")
    frozen = {}
    feature_fn = zoomshot_method.aligned_features(cv, ci)
  else:
    batches = training.ImageBatches(
        run.parts()["train"], {"vision": run.vision.preprocess, "clip": run.clip.preprocess},
        t.batch_size, c.seed, mesh, independent=not z.paired, augment=c.features.augment,
        in_memory_bytes=data.pipeline.memory_bytes(c.data.in_memory_gb, "data.in_memory_gb"))
    frozen = {"vision": run.vision.variables, "clip": run.clip.params}
    feature_fn = zoomshot_method.aligned_features(cv, ci, run.vision, run.clip)
  frozen.update(text=np.asarray(text * class_norm, np.float32), classes=classes)
  weights = tuple(sorted(dict(z.loss).items()))
  if z.method == "zoomshot":
    loss_fn = method.make_loss_fn(zoomshot_method.Hyper(
        weights=weights, paired=z.paired, pgkd_mode=z.pgkd_mode, tau=z.pgkd_temperature,
        logit_scale=run.clip.logit_scale, class_norm=class_norm,
        text_batch=z.text_batch_size), feature_fn)
  else:
    loss_fn = method.make_loss_fn(feature_fn, weights)
  total = t.epochs * batches.steps_per_epoch
  params = method.init(jax.random.PRNGKey(c.seed), run.vision.dim, run.clip.dim)
  if z.init == "ridge":
    v = train_feats["vision"].astype(np.float32) * cv
    u = train_feats["clip"].astype(np.float32) * ci
    params = {"h": ridge.fit_arrays(v, u, mesh, z.ridge_weight_decay)}
    if z.method == "zoomshot":
      params["g"] = ridge.fit_arrays(u, v, mesh, z.ridge_weight_decay)
  logging.info("Training %s: %d epochs x %d steps of %d.", z.method, t.epochs,
               batches.steps_per_epoch, t.batch_size)
  state = training.fit(
      loss_fn, params, frozen, batches, total, training.make_optimizer(c.optimizer, total),
      mesh, os.path.join(run.workdir, "checkpoints"), batch_size=t.batch_size, seed=c.seed,
      checkpoint_every=t.checkpoint_every, keep=t.keep_checkpoints, log_every=t.log_every,
      metadata=c.to_dict(), evaluate=evaluate, eval_every=t.eval_every, hooks=hooks,
      name=f"train {z.method}", logdir=run.workdir)
  return state["params"], total


def evaluate_mapped(run: Run) -> dict:
  """Zero-shot results of vision encoder + h (and CLIP for reference)."""
  c = run.config
  maps, meta = artifact.load(run.export_path)
  for side in ("vision", "clip"):
    got = {k: v for k, v in meta[side].items() if k in run.identity[side]}
    if got != run.identity[side]:
      raise UserError(f"{run.export_path} was trained for other {side} weights than the "
                      f"config names (artifact {got}, config {run.identity[side]}); re-run "
                      "the train stage or fix config.vision / config.clip.")
  vision, method = run.vision, c.zoomshot.method

  def mapped_features(variables, images):
    return linear.apply(variables["h"], vision.image_features(variables["vision"], images))

  mapped = registry.Model(
      run.clip, mapped_features, {"vision": vision.variables, "h": jax.tree.map(
          lambda x: np.asarray(x, np.float32), maps["h"])}, vision.preprocess)
  results = {method: registry.run(c.evals, mapped, run.mesh,
                                  os.path.join(run.workdir, method))}
  if c.reference_clip:
    results["clip"] = registry.run(c.evals, registry.Model(run.clip), run.mesh,
                                   os.path.join(run.workdir, "clip"))
  return results


def run(config: ml_collections.ConfigDict, workdir: str, hooks=()) -> dict:
  stages = parse_stages(config.stages)
  validate(config)
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  r = Run(config, workdir)
  # Batch sizes are checked against the mesh now, not after hours of extraction.
  if "extract" in stages:
    sharding.local_batch_size(config.features.batch_size, r.mesh, "features.batch_size")
  if "train" in stages and config.zoomshot.solver == "sgd":
    sharding.local_batch_size(config.train.batch_size, r.mesh, "train.batch_size")
  if "eval" in stages:
    for name, e in config.evals.items():
      sharding.local_batch_size(e.batch_size, r.mesh, f"evals.{name}.batch_size")
  out = {}
  if "extract" in stages:
    extract(r)
  if "train" in stages:
    out["export"] = train(r, hooks)
  if "eval" in stages:
    results = evaluate_mapped(r)
    out["results"] = results
    write_results(workdir, results)
  return out
