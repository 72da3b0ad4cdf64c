"""Zero-shot feature distillation: train a student image encoder on CLIP's
image features, export it into CLIP's space, evaluate it zero-shot.

  python -m zoomshot_jax.main --config=configs/distill.py:vit_tiny,stage2,pets \
      --workdir=DIR --config.data.dataset=folder:/data/synthetic/pets/images

Steps: the teacher (a CLIP, frozen) and the student (models/student.py) are
built; the student trains with the shared step and loop (methods/
feature_distillation.py's loss, the teacher run inside the step on the same
augmented batch, or not at all at alpha = 1; Orbax checkpoints, exact
resume); it is exported to <workdir>/export/student (save_pretrained +
head.npz + student.json: a vision encoder "student" of the registry, in CLIP
space); the evaluators of config.evals run on it with the teacher's text
tower (and on the teacher, with reference_clip).

Workdir: config.json, checkpoints/, export/student/, params.json (student
vs teacher parameter counts), results.json {"student"|"clip": {dataset:
{top1, top5, num_examples}}}, TensorBoard scalars of every loss term.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from zoomshot_jax import data, encoders, evaluation, io_utils, models, sharding, training
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import registry
from zoomshot_jax.evaluation.classifier import encode_texts
from zoomshot_jax.evaluation.results import write_results
from zoomshot_jax.methods import feature_distillation as fd


def hyper(config) -> fd.Hyper:
  d = config.distill
  h = fd.Hyper(distill=d.loss, alpha=float(d.alpha), log_temperature=float(d.log_temperature),
               learn_temperature=bool(d.learn_temperature))
  fd.check(h)
  return h


def validate(config) -> None:
  """Refuses bad settings before anything heavy runs."""
  hyper(config)
  if not config.data.dataset:
    raise UserError("config.data.dataset is empty: give the training images, a tfds name or "
                    "folder:<path> (<class>/<file> layout).")
  if config.train.epochs <= 0:
    raise UserError(f"config.train.epochs={config.train.epochs} must be positive.")
  data.pipeline.memory_bytes(config.data.in_memory_gb, "data.in_memory_gb")
  s = config.student
  if not s.checkpoint and s.preset not in models.student.PRESETS:
    raise UserError(f"config.student.preset={s.preset!r}: expected one of "
                    f"{sorted(models.student.PRESETS)} (or set config.student.checkpoint).")
  registry.check(config.evals)


def teacher_image_params(clip) -> int:
  """Parameters of the teacher's image tower (encoder + projection)."""
  p = clip.params
  return models.student.count({k: p[k] for k in ("vision_model", "visual_projection") if k in p})


def class_prompts(source, config):
  """The contrastive term's prompts, in the data's label order.

  A folder of generated images must have one directory per class name of
  config.data.classnames_file (in any order; '_' for spaces); its labels
  follow the sorted directories.
  """
  d = config.data
  if d.dataset.startswith("folder:") and d.classnames_file:
    dirs = list(source.label_names)      # sorted directory names, "_" read as " "
    names = list(evaluation.classnames.read_list(d.classnames_file, "class names"))
    missing = [n for n in names if n not in dirs]
    extra = [n for n in dirs if n not in names]
    if missing or extra:
      raise UserError(f"config.data.dataset={d.dataset}: its class directories do not match "
                      f"config.data.classnames_file ({d.classnames_file}): no directory for "
                      f"{missing[:5]}, directories not in the list: {extra[:5]}. Name each "
                      "directory after its class ('_' for spaces).")
    return evaluation.get_prompts(d.dataset, source.num_classes, dirs, "", "",
                                  tuple(d.templates))
  return evaluation.get_prompts(d.dataset, source.num_classes, source.label_names,
                                d.classnames_file, "", tuple(d.templates))


IMAGE_TEXT_KINDS = ("tsv:", "jsonl:", "tfrecord:", "tfds:")


def caption_table(images_root: str, captions_dir: str):
  """(files -> {"caption": id per file}, the unique captions) of a folder whose
  images have caption files <captions_dir>/<class>/<stem>.txt."""
  texts: dict[str, int] = {}

  def extras(files):
    ids = []
    for f in files:
      cls, name = os.path.basename(os.path.dirname(f)), os.path.basename(f)
      path = os.path.join(captions_dir, cls, os.path.splitext(name)[0] + ".txt")
      if not os.path.exists(path):
        raise UserError(f"config.data.captions_dir={captions_dir}: no caption file {path} for "
                        f"the image {f}; every image needs one (<class>/<stem>.txt).")
      with open(path, encoding="utf-8") as fh:
        text = fh.read().strip()
      ids.append(texts.setdefault(text, len(texts)))
    return {"caption": np.asarray(ids, np.int32)}

  return extras, texts


def training_source(config, extras=None):
  """The training images: tfds / folder: (labelled), or an image–text source
  of ASIF's kinds (tsv:, jsonl:, tfrecord:, tfds:; stage 1's web pairs),
  whose captions the `l2` and `i2i` terms do not need."""
  d = config.data
  if extras is not None:
    if not d.dataset.startswith(data.FOLDER_PREFIX):
      raise UserError(f"config.data.captions_dir is set, but config.data.dataset={d.dataset!r} "
                      "is not a folder: per-image captions are read beside folder images.")
    return data.folder_source(d.dataset, config.verify_images, extras)
  if not d.dataset.startswith(IMAGE_TEXT_KINDS):
    return data.get_source(d.dataset, d.split, config.data_dir or None, config.tfds_download,
                           config.verify_images)
  if config.distill.alpha > 0:
    raise UserError(f"config.data.dataset={d.dataset!r} is an image-text source; the "
                    "contrastive term on its captions is not implemented yet (it uses class "
                    "prompts). Set --config.distill.alpha=0 (the reference's stage 1 is l2).")
  from zoomshot_jax.asif import sources as pairs  # pylint: disable=g-import-not-at-top
  src = pairs.get_anchor_source(d.dataset, split=d.split, data_dir=config.data_dir or None,
                                verify_files=config.verify_images)

  def shard(index, count):
    start, end = data.sources.contiguous_range(src.num_examples, index, count)
    return src.dataset(start, end).map(lambda ex: {"image": ex["image"], "label": 0}), end - start

  return data.Source(name=d.dataset, split=d.split, num_classes=1, label_names=None,
                     _shard=shard, _size=lambda: src.num_examples)


def _recipe_key(config) -> str:
  """What the export depends on (a finished export with it is reused)."""
  parts = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
           for k in ("seed", "clip", "dtype", "student", "data", "features", "distill",
                     "train", "optimizer")}
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(config, workdir: str, clip, mesh, hooks=()) -> str:
  """Trains and exports the student; returns the export directory."""
  export = os.path.join(workdir, "export", "student")
  key = _recipe_key(config)
  meta_path = os.path.join(export, "student.json")
  if os.path.exists(meta_path) and io_utils.read_json(meta_path).get("recipe_key") == key:
    logging.info("Using the exported student in %s (same recipe).", export)
    return export
  h, t = hyper(config), config.train
  captions = caption_table(config.data.dataset[len(data.FOLDER_PREFIX):],
                           config.data.captions_dir) if config.data.captions_dir else None
  source = training_source(config, captions[0] if captions else None)
  # Checked whenever class names are given: a folder that does not match
  # them is a mistake even where no term reads the prompts.
  prompts = (class_prompts(source, config) if h.alpha > 0 or config.data.classnames_file
             else None)
  spec = clip.preprocess
  student = models.student.build(config.student, spec.image_size, clip.dim, config.seed)
  counts = {"student": student.num_params, "student_encoder": models.student.count(
      student.params["encoder"]), "teacher_image_tower": teacher_image_params(clip)}
  counts["ratio"] = counts["student"] / counts["teacher_image_tower"]
  logging.info("Student %s (%s, %s pooling): %d parameters = %.1f%% of the teacher's image "
               "tower (%d).", config.student.preset or config.student.checkpoint, student.arch,
               student.pooling, counts["student"], 100 * counts["ratio"],
               counts["teacher_image_tower"])
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, "params.json"), counts)

  # One view: the student sees the teacher's geometry and normalisation, so
  # both networks read the same uint8 crop.
  text_key = "caption" if captions else "label"
  batches = training.ImageBatches(source, {"image": spec}, t.batch_size, config.seed, mesh,
                                  augment=config.features.augment, keep=(text_key,),
                                  in_memory_bytes=data.pipeline.memory_bytes(
                                      config.data.in_memory_gb, "data.in_memory_gb"))
  # At alpha = 1 the step reads no teacher image feature: its weights are
  # then not a step input (no replicated copy on the mesh).
  frozen = {"teacher": clip.params} if h.uses_teacher_images else {}
  if h.alpha > 0 and captions:
    unique = list(captions[1])          # in id order (dicts keep insertion order)
    logging.info("Contrastive texts: %d distinct captions of %d images.", len(unique),
                 source.size())
    frozen["text"] = encode_texts(clip, unique)    # unit norm
  elif h.alpha > 0:
    frozen["text"] = evaluation.build_classifier(clip, prompts, 256, None)
  if not h.uses_teacher_images:
    logging.info("Teacher image features: not needed (alpha = 1, the contrastive term only).")
  else:
    logging.info("Teacher features: computed in the step on the %s batch.",
                 "augmented" if config.features.augment else "un-augmented")

  def student_embed(params, model_state, images):
    return models.student.embed(student, params, model_state, spec.normalize(images),
                                train=True)

  loss_fn = fd.make_loss_fn(h, student_embed, clip.image_features, "image", "image", text_key)
  total = t.epochs * batches.steps_per_epoch
  logging.info("Training the student: %d epochs x %d steps of %d (%s).", t.epochs,
               batches.steps_per_epoch, t.batch_size, h)
  state = training.fit(
      loss_fn, fd.init(student.params, h), frozen, batches, total,
      training.make_optimizer(config.optimizer, total), mesh,
      os.path.join(workdir, "checkpoints"), batch_size=t.batch_size,
      model_state=student.model_state, seed=config.seed,
      checkpoint_every=t.checkpoint_every, keep=t.keep_checkpoints, log_every=t.log_every,
      metadata=config.to_dict(), hooks=hooks, name="train student", logdir=workdir)
  params = {k: v for k, v in jax.device_get(state["params"]).items() if k != "log_temperature"}
  if jax.process_index() == 0:
    models.student.write(export, student, params, jax.device_get(state["model_state"]), spec,
                         {"teacher": config.clip, "loss": str(h), "steps": total,
                          "recipe_key": key, "params": counts})
    logging.info("Exported the student to %s.", export)
  multihost_utils.sync_global_devices("distill-export")
  return export


def run(config: ml_collections.ConfigDict, workdir: str, hooks=()) -> dict:
  validate(config)
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  mesh = sharding.make_mesh(config.mesh)
  sharding.local_batch_size(config.train.batch_size, mesh, "train.batch_size")
  for name, e in config.evals.items():
    sharding.local_batch_size(e.batch_size, mesh, f"evals.{name}.batch_size")
  clip = encoders.load_clip(config.clip, config.dtype)
  export = train(config, workdir, clip, mesh, hooks)
  student = encoders.load_vision_encoder("student", export)
  results = {"student": registry.run(config.evals, registry.Model(
      clip, student.image_features, student.variables, student.preprocess), mesh,
                                     os.path.join(workdir, "student"))}
  if config.reference_clip:
    results["clip"] = registry.run(config.evals, registry.Model(clip), mesh,
                                   os.path.join(workdir, "clip"))
  write_results(workdir, results)
  return {"results": results, "export": export,
          "params": io_utils.read_json(os.path.join(export, "student.json"))["params"]}
