"""Zoom-shot and Text-to-Concept: extract features, train the maps, evaluate.

  python -m zoomshot_jax.main --config=configs/zoomshot.py:dinov2_b14,b32 --workdir=DIR

`config.stages` picks any of:
  extract  encode the training subset (and held-out images) with both frozen
           encoders into a sharded feature cache (resumable shard by shard);
  train    fit the maps (cached features, or online from images), with Orbax
           checkpoints and resume, then export <workdir>/export/mapping.npz;
  eval     zero-shot evaluation of vision encoder + h in CLIP space (and of
           CLIP itself) on config.eval.datasets, into results.json.

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
from clu import metric_writers
from jax.experimental import multihost_utils

from zoomshot_jax import data, encoders, evaluation, io_utils, methods, sharding
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation.classifier import cache_key, encode_texts
from zoomshot_jax.methods import artifact, linear, losses, ridge
from zoomshot_jax.programs import zeroshot_eval
from zoomshot_jax.training import checkpoints, features, loop

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
  if config.method not in methods.METHODS:
    raise UserError(f"config.method={config.method!r}: expected one of "
                    f"{sorted(methods.METHODS)}.")
  method = methods.METHODS[config.method]
  weights = dict(config.loss)
  unknown = [k for k in weights if k not in method.terms]
  if unknown:
    raise UserError(f"config.loss has terms {unknown} that {config.method} does not have; "
                    f"its terms are {list(method.terms)}.")
  if not any(weights.values()) and config.solver != "closed_form":
    raise UserError("config.loss: every term has weight 0; nothing would be trained.")
  if not config.paired:
    needy = [k for k in losses.PAIRED_TERMS if weights.get(k)]
    if needy or config.method == "text_to_concept":
      raise UserError(
          f"config.paired=False, but {'loss term(s) ' + ', '.join(needy) if needy else 'text_to_concept'} "
          "need the two encoders to see the same images. Set "
          f"{' '.join('--config.loss.' + k + '=0' for k in needy) or '--config.method=zoomshot'}, "
          "or --config.paired=True.")
  for field, allowed in (("pgkd_mode", ("kl", "hard_ce")), ("features", ("cached", "online")),
                         ("solver", ("sgd", "closed_form")), ("init", ("random", "ridge")),
                         ("feature_dtype", ("float16", "float32"))):
    if config[field] not in allowed:
      raise UserError(f"config.{field}={config[field]!r}: expected one of {list(allowed)}.")
  if config.solver == "closed_form" and config.method != "text_to_concept":
    raise UserError("config.solver='closed_form' is Text-to-Concept's exact solver; for "
                    "Zoom-shot use --config.init=ridge to start from it.")
  if config.features == "online" and (config.init == "ridge" or config.solver == "closed_form"):
    raise UserError("the closed-form solver needs cached features; set "
                    "--config.features=cached.")
  if config.features == "online" and config.heldout_examples <= 0:
    raise UserError("config.features='online' takes the alignment scales from the held-out "
                    "images; set config.heldout_examples > 0 (e.g. 10000).")
  if config.epochs <= 0:
    raise UserError(f"config.epochs={config.epochs} must be positive.")


def _eval_config(config) -> ml_collections.ConfigDict:
  """The zero-shot evaluator's fields, from config.eval and the shared data fields."""
  e = config.eval
  return ml_collections.ConfigDict({
      "datasets": e.datasets, "split": e.split, "batch_size": e.batch_size,
      "text_batch_size": e.text_batch_size, "cache_dir": e.cache_dir,
      "save_predictions": e.save_predictions, "classnames_file": e.classnames_file,
      "templates_file": e.templates_file, "data_dir": config.data_dir,
      "tfds_download": config.tfds_download, "verify_images": config.verify_images})


def _prompt_embeddings(clip, prompts, config) -> tuple[np.ndarray, np.ndarray]:
  """(every prompt's unit embedding [K*J, d], classifier W [K, d]), cached on disk."""
  cache = zeroshot_eval.resolve_cache_dir(config.eval.cache_dir)
  path = cache and os.path.join(cache, "prompts", cache_key(clip, prompts) + ".npy")
  k, j = len(prompts.classnames), len(prompts.templates)
  t = None
  if path and tf.io.gfile.exists(path):
    t = io_utils.load_npy(path)
    t = t if t.shape == (k * j, clip.dim) else None
  if t is None:
    t = encode_texts(clip, prompts.texts(), config.eval.text_batch_size)
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
    self.cache_dir = config.cache_dir or os.path.join(workdir, "features")
    self.export_path = os.path.join(workdir, "export", "mapping.npz")

  @functools.cached_property
  def source(self) -> data.Source:
    c = self.config
    return data.get_source(c.train_dataset, c.train_split, c.data_dir or None,
                           c.tfds_download, c.verify_images)

  @functools.cached_property
  def _indices(self):
    """(train, held-out) example indices: a permutation of the split, drawn once."""
    c = self.config
    return features.select_examples(self.source.size(), c.train_fraction,
                                    c.heldout_examples, c.seed)

  def num_heldout(self) -> int:
    return len(self._indices[1])

  def parts(self) -> dict[str, data.Source]:
    """{"train": the seeded train_fraction subset, "heldout": disjoint held-out images}."""
    c = self.config
    train_idx, held_idx = self._indices
    logging.info("%s/%s: %d training and %d held-out images.", c.train_dataset, c.train_split,
                 len(train_idx), len(held_idx))
    return {"train": self.source.subset(train_idx, f"{c.train_dataset} train subset"),
            "heldout": self.source.subset(held_idx, f"{c.train_dataset} held-out")}

  def description(self, part: str) -> dict:
    c = self.config
    d = {"dataset": c.train_dataset, "split": c.train_split, "part": part,
         "train_fraction": c.train_fraction, "seed": c.seed}
    if part == "heldout":  # the training subset does not depend on it
      d["heldout_examples"] = c.heldout_examples
    return d

  def prompts(self):
    c = self.config
    return evaluation.get_prompts(c.train_dataset, self.source.num_classes,
                                  self.source.label_names, c.prompts.classnames_file,
                                  c.prompts.templates_file)


def extract(run: Run) -> None:
  c = run.config
  parts = run.parts()
  wanted = ["heldout"] + (["train"] if c.features == "cached" else [])
  for part in wanted:
    if not parts[part].size():
      continue
    features.extract(parts[part], run.vision, run.clip, run.mesh,
                     os.path.join(run.cache_dir, part), run.description(part),
                     c.extract_batch_size, c.shard_size, c.feature_dtype, run.identity)


def _load_part(run: Run, part: str) -> dict[str, np.ndarray]:
  return features.load(os.path.join(run.cache_dir, part), run.identity)


def train(run: Run, hooks=()) -> dict:
  """Fits the maps and exports them; returns the artifact's metadata."""
  c = run.config
  has_heldout = run.num_heldout() > 0
  held = _load_part(run, "heldout") if has_heldout else None
  if c.features == "cached":
    train_feats = _load_part(run, "train")
  # Variance alignment (METHODS.md §1) from the training features; online
  # mode has none cached and uses the held-out images' (ours).
  stats_from = train_feats if c.features == "cached" else held
  mv, mc = features.moments(stats_from["vision"]), features.moments(stats_from["clip"])
  cv = linear.alignment_scale(mv["sum"], mv["sumsq"], mv["entries"])
  ci = linear.alignment_scale(mc["sum"], mc["sumsq"], mc["entries"])
  class_norm = linear.rms_norm(mc["sumsq"], mc["rows"], ci)
  logging.info("Alignment scales: vision %.4g, clip %.4g.", cv, ci)
  text, classes = _prompt_embeddings(run.clip, run.prompts(), c)
  evaluate = loop.heldout_evaluator(held["vision"], held["clip"], cv, ci, classes,
                                    run.clip.logit_scale, run.mesh) if has_heldout else None

  if c.solver == "closed_form":
    params = {"h": ridge.fit_arrays(train_feats["vision"].astype(np.float32) * cv,
                                    train_feats["clip"].astype(np.float32) * ci, run.mesh,
                                    c.ridge_weight_decay)}
    step = 0
  else:
    params, step = _train_sgd(run, train_feats if c.features == "cached" else None,
                              cv, ci, class_norm, text, classes, evaluate, hooks)
  heldout = evaluate(params) if evaluate else {}
  if heldout:
    logging.info("Held-out: R² %.4f, agreement with CLIP %.4f.", heldout["heldout/r2"],
                 heldout["heldout/agreement"])
  maps = {name: linear.fold(p, *((cv, ci) if name == "h" else (ci, cv)))
          for name, p in jax.device_get(params).items()}
  meta = {"method": c.method, "vision": run.identity["vision"], "clip": {
      **run.identity["clip"], "logit_scale": run.clip.logit_scale},
          "scales": {"vision": cv, "clip": ci},
          "train": {**run.description("train"), "epochs": c.epochs, "steps": step,
                    "solver": c.solver},
          "heldout": {k.split("/")[1]: v for k, v in heldout.items()}}
  if jax.process_index() == 0:
    artifact.save(run.export_path, maps, meta)
    logging.info("Exported %s.", run.export_path)
  # Other hosts read the export in the eval stage: not before it exists.
  multihost_utils.sync_global_devices("zoomshot-export")
  return meta


def _train_sgd(run, train_feats, cv, ci, class_norm, text, classes, evaluate, hooks):
  c = run.config
  mesh = run.mesh
  objective = loop.Objective(
      method=c.method, weights=tuple(sorted(dict(c.loss).items())), paired=c.paired,
      pgkd_mode=c.pgkd_mode, tau=c.pgkd_temperature, logit_scale=run.clip.logit_scale,
      class_norm=class_norm, text_batch=c.text_batch_size, seed=c.seed)
  if c.features == "cached":
    batches = loop.CachedBatches(train_feats["vision"], train_feats["clip"], c.batch_size,
                                 c.seed, c.paired, mesh)
    frozen = {}
    feature_fn = loop.cached_features(cv, ci)
  else:
    batches = loop.OnlineBatches(run.parts()["train"], run.vision, run.clip, c.batch_size,
                                 c.seed, c.paired, c.augment, mesh)
    frozen = evaluation.zeroshot.replicate(
        {"vision": run.vision.variables, "clip": run.clip.params}, mesh)
    feature_fn = loop.online_features(run.vision, run.clip, cv, ci)
  total = c.epochs * batches.steps_per_epoch
  tx = loop.make_optimizer(c.optimizer, total)
  key = jax.random.PRNGKey(c.seed)
  params = methods.init_params(c.method, key, run.vision.dim, run.clip.dim)
  if c.init == "ridge":
    v = train_feats["vision"].astype(np.float32) * cv
    t = train_feats["clip"].astype(np.float32) * ci
    params = {"h": ridge.fit_arrays(v, t, mesh, c.ridge_weight_decay)}
    if "g" in methods.METHODS[c.method].maps:
      params["g"] = ridge.fit_arrays(t, v, mesh, c.ridge_weight_decay)
  state = evaluation.zeroshot.replicate(loop.init_state(params, tx), mesh)
  mngr = checkpoints.manager(os.path.join(run.workdir, "checkpoints"), c.checkpoint_every,
                             c.keep_checkpoints, c.to_dict())
  state, start = checkpoints.restore_latest(mngr, state)
  state = evaluation.zeroshot.replicate(state, mesh)
  consts = evaluation.zeroshot.replicate(
      {"text": np.asarray(text * class_norm, np.float32), "classes": classes}, mesh)
  writer = metric_writers.create_default_writer(run.workdir,
                                                just_logging=jax.process_index() > 0)
  logging.info("Training %s: %d epochs x %d steps of %d, from step %d.", c.method, c.epochs,
               batches.steps_per_epoch, c.batch_size, start)
  step_fn = loop.make_train_step(objective, tx, mesh, feature_fn)
  state = loop.train(step_fn, state, frozen, consts, batches, total, mngr, writer,
                     c.log_every, c.batch_size, evaluate, c.eval_every, hooks)
  mngr.close()
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
  vision = run.vision
  ecfg = _eval_config(c)

  def mapped_features(variables, images):
    return linear.apply(variables["h"], vision.image_features(variables["vision"], images))

  variables = {"vision": vision.variables,
               "h": jax.tree.map(lambda x: np.asarray(x, np.float32), maps["h"])}
  results = {c.method: zeroshot_eval.evaluate_clip(
      ecfg, run.clip, run.mesh, feature_fn=mapped_features, variables=variables,
      preprocess=vision.preprocess, workdir=os.path.join(run.workdir, c.method))}
  if c.eval.clip_reference:
    results["clip"] = zeroshot_eval.evaluate_clip(ecfg, run.clip, run.mesh,
                                                  workdir=os.path.join(run.workdir, "clip"))
  return results


def run(config: ml_collections.ConfigDict, workdir: str, hooks=()) -> dict:
  stages = parse_stages(config.stages)
  validate(config)
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  r = Run(config, workdir)
  # Batch sizes are checked against the mesh now, not after hours of extraction.
  if "extract" in stages:
    sharding.local_batch_size(config.extract_batch_size, r.mesh, "extract_batch_size")
  if "train" in stages and config.solver == "sgd":
    sharding.local_batch_size(config.batch_size, r.mesh)
  if "eval" in stages:
    sharding.local_batch_size(config.eval.batch_size, r.mesh, "eval.batch_size")
  out = {}
  if "extract" in stages:
    extract(r)
  if "train" in stages:
    out["export"] = train(r, hooks)
  if "eval" in stages:
    results = evaluate_mapped(r)
    out["results"] = results
    zeroshot_eval.write_results(workdir, results)
  return out
