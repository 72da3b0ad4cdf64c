"""The demo's stages: world -> two models -> maps -> zero-shot table.

Workdir layout:
  tfds/                      the generated world (tfds cache; data_dir)
  models/clip-<hash>/        with config.models="retrain": the tiny CLIP
                             (save_pretrained; cached by config)
  models/vision-<hash>/      ... and the tiny ResNet ("shipped" loads both
                             from the package: demo/shipped.py)
  pretrain/<model>-<hash>/   their Orbax checkpoints and TensorBoard logs
  maps/<method>/             Zoom-shot and Text-to-Concept runs of the
                             Zoom-shot binary (features shared in
                             maps/features-<hash>)
  prompts/                   class names and the two template sets
  synthetic/, distill/       the feature-distillation rows (distillation_rows.py)
  vl/                        the VL rows: the world's VQA, SNLI-VE and VCR
                             files in vl/data, a vl_finetune run per task
                             (vl_rows.py)
  results.json, results.png  the table and its bar chart
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from zoomshot_jax import console, encoders, evaluation, io_utils, models, sharding, world
from zoomshot_jax.asif import Asif
from zoomshot_jax.asif.evaluate import metrics as asif_metrics
from zoomshot_jax.configs import zoomshot as zoomshot_config
from zoomshot_jax.demo import distillation_rows, report, shipped, vl_rows
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation.classifier import encode_texts
from zoomshot_jax.programs import zoomshot
from zoomshot_jax.world import render


def _hash(*parts) -> str:
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def _stage(name: str, timings: dict):
  """A console stage; what it prints (tfds notices, the Zoom-shot binary's own
  tables) goes to the log, so the terminal shows one line per stage."""
  return console.stage(name, timings, capture_stdout=True)


def load_split(builder, split: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  """A whole split of the world in memory: {"image", "captions", "objects/..."}."""
  num_captions = 3

  def flat(ex):
    out = {}
    if "image" in keys:
      out["image"] = ex["image"]
    if "captions" in keys:
      # Fixed width: pad with "" (never sampled) so splits batch densely.
      caps = ex["captions"][:num_captions]
      out["captions"] = tf.concat(
          [caps, tf.fill([num_captions - tf.shape(caps)[0]], "")], 0)
    if "objects" in keys:
      n = len(render.SHAPES)
      out["shapes"] = tf.reduce_max(tf.one_hot(ex["objects"]["shape"], n), 0)
      out["colours"] = tf.reduce_max(tf.one_hot(ex["objects"]["colour"], len(render.COLOURS)),
                                     0)
    if "label" in keys:
      out["label"] = ex["label"]
    return out

  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(flat, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
  parts = list(tfds.as_numpy(ds))
  arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if "captions" in arrays:
    arrays["captions"] = arrays["captions"].astype(str)
  return arrays


def _write_prompts(workdir: str, config) -> dict[str, str]:
  d = os.path.join(workdir, "prompts")
  files = {"classnames": os.path.join(d, "classnames.json"),
           "map_templates": os.path.join(d, "map_templates.json"),
           "eval_templates": os.path.join(d, "eval_templates.json")}
  io_utils.atomic_write_json(files["classnames"], render.class_names())
  io_utils.atomic_write_json(files["map_templates"], list(config.map_templates))
  io_utils.atomic_write_json(files["eval_templates"], list(config.eval_templates))
  return files


def map_config(config, method: str, dataset: str, data_dir: str, clip_dir: str,
               vision_dir: str, prompts: dict[str, str], cache_dir: str, num_images: int):
  """The Zoom-shot binary's config for one method on the world.

  `num_images`: the size of map_train; what the maps do not train on is held out.
  """
  c = zoomshot_config.get_config()
  m, z = config.maps, c.zoomshot
  z.method = method
  c.seed = config.seed
  c.clip = clip_dir
  c.vision.update({"name": "resnet", "checkpoint": vision_dir, "pooling": "pooler"})
  c.data_dir = data_dir
  c.data.update(dataset=dataset, split="map_train", train_fraction=m.train_fraction,
                heldout_examples=num_images - max(1, round(m.train_fraction * num_images)))
  c.features.update(cache_dir=cache_dir, dtype="float32", batch_size=config.batch_size)
  c.train.update(batch_size=m.batch_size, epochs=m.epochs, log_every=20,
                 eval_every=1_000_000, checkpoint_every=1_000_000)
  c.optimizer.learning_rate = m.learning_rate
  z.prompts.update(classnames_file=prompts["classnames"],
                   templates_file=prompts["map_templates"])
  z.text_batch_size = min(z.text_batch_size,
                          len(render.class_names()) * len(config.map_templates))
  c.evals.zeroshot.update({"datasets": dataset, "split": "test", "cache_dir": "none",
                           "batch_size": config.batch_size,
                           "classnames_file": prompts["classnames"],
                           "templates_file": prompts["eval_templates"]})
  if method == "text_to_concept":
    z.loss = ml_collections.ConfigDict({"mse": 1.0})
    z.solver = m.text_to_concept_solver
  c.reference_clip = method == "zoomshot"
  c.mesh = config.mesh
  return c


def train_clip(cfg, seed: int, micro: bool, data_dir: str, out_dir: str, tmp_dir: str, mesh,
               timings: dict, evaluate=None, eval_every: int = 0) -> str:
  """The tiny CLIP, trained on the captioned `clip_train` images of every
  world in cfg.renderers (it plays a web-trained CLIP: the photo world is its
  home ground too, not a shift); written to out_dir."""
  images, captions = [], []
  for renderer in cfg.renderers:
    name = world.config_name(renderer, seed, micro=micro)
    with _stage(f"world {name} (CLIP's captions)", timings):
      d = load_split(world.prepare(name, data_dir), "clip_train", ("image", "captions"))
    images.append(d["image"])
    captions.append(d["captions"])
  with _stage("train clip", timings):
    return models.tiny_clip.train(cfg, np.concatenate(images), np.concatenate(captions),
                                  render.vocabulary(), out_dir, tmp_dir, mesh,
                                  evaluate=evaluate, eval_every=eval_every)


def train_vision(cfg, builder, out_dir: str, tmp_dir: str, mesh, timings: dict) -> str:
  """The tiny ResNet, trained on the world's `vision_train` attribute labels."""
  with _stage("train vision", timings):
    d = load_split(builder, "vision_train", ("image", "objects"))
    targets = np.concatenate([d["shapes"], d["colours"]], axis=1)
    return models.tiny_resnet.train(cfg, d["image"], targets, out_dir, tmp_dir, mesh)


def _retrained(config, workdir: str, builder, world_name: str, data_dir: str, mesh,
               timings) -> tuple[str, str]:
  """(CLIP dir, vision dir) trained here, unless a finished one with this
  config exists in the workdir."""
  w = config.world
  paths = {}
  for name, cfg, parts in (("clip", config.clip, (w.seed, w.scale)),
                           ("vision", config.vision, (world_name,))):
    key = _hash(*parts, cfg.to_dict())
    paths[name] = (os.path.join(workdir, "models", f"{name}-{key}"),
                   os.path.join(workdir, "pretrain", f"{name}-{key}"))
  (clip_dir, clip_tmp), (vision_dir, vision_tmp) = paths["clip"], paths["vision"]
  if os.path.exists(os.path.join(clip_dir, "config.json")):
    logging.info("Using the trained clip in %s.", clip_dir)
  else:
    train_clip(config.clip, w.seed, w.scale == "micro", data_dir, clip_dir, clip_tmp, mesh,
               timings)
  if os.path.exists(os.path.join(vision_dir, "config.json")):
    logging.info("Using the trained vision encoder in %s.", vision_dir)
  else:
    train_vision(config.vision, builder, vision_dir, vision_tmp, mesh, timings)
  return clip_dir, vision_dir


def _shipped(config) -> tuple[str, str, dict]:
  """(CLIP dir, vision dir, their manifest entries) of the shipped models,
  fingerprints checked; refuses settings they were not trained for."""
  from zoomshot_jax.configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  w = config.world
  info = shipped.manifest()
  fix = "add --config.models=retrain to train the models on this world here"
  # The micro world of a seed is the first examples of each split of the
  # full one (an example is a function of (seed, split, index)), so the
  # shipped models suit both; another seed's test images are unseen but its
  # maps would pair with models trained on other scenes.
  if w.seed != info["world_seed"]:
    raise UserError(f"config.world.seed={w.seed}: the shipped demo models were trained on the "
                    f"world of seed {info['world_seed']}; {fix}.")
  defaults = demo_config.get_config("micro" if w.scale == "micro" else None)
  for group in ("clip", "vision"):
    changed = sorted(k for k, v in config[group].items() if defaults[group].get(k) != v)
    if changed:
      raise UserError(f"config.{group}.{changed[0]} was changed, but config.models='shipped' "
                      "uses the shipped checkpoints (config.clip and config.vision are the "
                      "recipe --config.models=retrain trains with); add "
                      "--config.models=retrain to train with these settings.")
  vision = f"vision_{w.renderer}"
  entries = info["models"]
  return (shipped.verify("clip"), shipped.verify(vision),
          {"clip": entries["clip"]["about"], "vision": entries[vision]["about"],
           "trained_by": info["command"]})


def _asif_row(config, builder, clip_dir, vision_dir, mesh) -> dict:
  """ASIF with the vision encoder's images and CLIP's text tower as the two spaces."""
  clip = encoders.load_clip(clip_dir)
  vision = encoders.load_vision_encoder("resnet", vision_dir, "pooler")
  anchors = load_split(builder, f"clip_train[:{config.asif.anchors}]", ("image", "captions"))
  test = load_split(builder, "test", ("image", "label"))
  embed = jax.jit(vision.image_features)
  bs = config.batch_size

  def images(x):
    return np.concatenate([np.asarray(embed(vision.variables, x[i:i + bs]))
                           for i in range(0, len(x), bs)])

  captions = [c[0] for c in anchors["captions"]]  # each anchor's first phrasing
  model = Asif(images(anchors["image"]), encode_texts(clip, captions, bs), captions,
               k=min(config.asif.k, len(captions)), p=config.asif.p, mesh=mesh)
  templates = tuple(config.eval_templates)
  texts = evaluation.Prompts(tuple(render.class_names()), templates, "demo").texts()
  scores = model.classify(images(test["image"]), encode_texts(clip, texts, bs),
                          num_templates=len(templates))
  return asif_metrics(scores, test["label"])


def run(config, workdir: str) -> dict:
  """Every stage; returns results.json's content."""
  timings: dict[str, float] = {}
  t0 = time.time()
  mesh = sharding.make_mesh(config.mesh)
  w = config.world
  if w.scale not in world.SPLIT_SIZES:
    raise UserError(f"config.world.scale={w.scale!r}: expected one of "
                    f"{sorted(world.SPLIT_SIZES)}.")
  if config.models not in shipped.SOURCES:
    raise UserError(f"config.models={config.models!r}: expected one of "
                    f"{list(shipped.SOURCES)}.")
  models.tiny_clip.check(config.clip)
  bad = [r for r in config.clip.renderers if r not in render.RENDERERS]
  if bad or not config.clip.renderers:
    raise UserError(f"config.clip.renderers={list(config.clip.renderers)}: expected one or more "
                    f"of {list(render.RENDERERS)}.")
  vl_rows.check(config)
  world_name = world.config_name(w.renderer, w.seed, micro=w.scale == "micro")
  dataset = f"shapes_world/{world_name}"
  data_dir = w.data_dir or os.path.join(workdir, "tfds")
  about = {}
  if config.models == "shipped":
    clip_dir, vision_dir, about = _shipped(config)
  with _stage("world", timings):
    builder = world.prepare(world_name, data_dir)
  if config.models == "retrain":
    clip_dir, vision_dir = _retrained(config, workdir, builder, world_name, data_dir, mesh,
                                      timings)
  prompts = _write_prompts(workdir, config)

  results = {}
  num_map = int(builder.info.splits["map_train"].num_examples)
  # Named by what the features depend on: a workdir of other settings (or of
  # an earlier release) extracts anew instead of being refused.
  cache_dir = os.path.join(workdir, "maps", "features-" + _hash(
      world_name, clip_dir, vision_dir, config.maps.train_fraction, num_map))
  for method in ("text_to_concept", "zoomshot"):
    with _stage(f"maps: {method}", timings):
      c = map_config(config, method, dataset, data_dir, clip_dir, vision_dir, prompts,
                     cache_dir, num_map)
      out = zoomshot.run(c, os.path.join(workdir, "maps", method))
      results.update({k: v[dataset] for k, v in out["results"].items()})
      results[method]["heldout"] = out["export"]["heldout"]
  with _stage("asif", timings):
    results["asif"] = _asif_row(config, builder, clip_dir, vision_dir, mesh)
  distillation = (distillation_rows.run(config, workdir, data_dir, clip_dir, prompts, mesh,
                                        _stage, timings) if config.distill.losses else None)
  vl = vl_rows.run(config, workdir, _stage, timings, clip_dir) if config.vl.tasks else None

  summary = {
      "world": {"dataset": dataset, "data_dir": data_dir,
                "splits": {s: int(builder.info.splits[s].num_examples)
                           for s in builder.info.splits}},
      "models": {"clip": clip_dir, "vision": vision_dir, "source": config.models,
                 "shipped": about or None},
      "num_classes": len(render.class_names()),
      "chance": {"top1": 100 / len(render.class_names()),
                 "top5": 500 / len(render.class_names())},
      "results": results,
      "distillation": distillation,
      "vl": vl,
      "prompts": {"maps": list(config.map_templates), "eval": list(config.eval_templates)},
      "timings_s": {**timings, "total": round(time.time() - t0, 1)},
  }
  if jax.process_index() == 0:
    report.write(workdir, summary)
  return summary
