"""Fine-tuning the VL student on VQA v2, SNLI-VE or VCR: the CLIP-TD baseline
(METHODS.md §5, without the distillation term).

  python -m zoomshot_jax.main --config=configs/vl_finetune.py:vqa,world,low1 --workdir=DIR

Stages, one console line each:
  prepare data  (world) the task's files written into <workdir>/data once
                (vl_files, seeded; a later run checks they were written with
                the same world settings); the records read, which refuses
                missing files and images, annotations without questions and
                VCR object indices out of range before anything trains; the
                low-shot subset (protocols.low_shot) or domain-shift split; the
                tokenizer; (vqa) the answer vocabulary, built over the whole
                training split (before any low-shot cut, as the standard
                vocabulary is) and kept as <workdir>/answers.json: a later run
                whose data give another vocabulary is refused
  train         vl_tasks' loss in the shared step and loop (data parallel over
                config.mesh and hosts; Orbax checkpoints, exact resume)
  evaluate      config.evals (type vl_task, vl/evaluate.py): the official
                metrics of every evaluation set -> results.json; VQA answers
                in the official results format, predictions/vqa_<set>.json

Workdir: config.json, answers.json (vqa), checkpoints/, predictions/,
results.json {"<task>_<set>": metrics}, TensorBoard scalars, data/ (world).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from zoomshot_jax import console, io_utils, sharding, training
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import registry
from zoomshot_jax.evaluation.results import write_results
from zoomshot_jax.methods import clip_td, vl_tasks
from zoomshot_jax.models import vl_student, vl_weights
from zoomshot_jax.vl import evaluate as vl_evaluate
from zoomshot_jax.vl import pipeline, protocols, readers, vqa_eval
from zoomshot_jax.vl import teacher as teacher_lib
from zoomshot_jax.vl import teacher_cache
from zoomshot_jax.world import vl_files, vl_text

SOURCES = ("world", "real")
REAL_TOKENIZER = "bert-base-uncased"
_LOW = re.compile(r"low(\d+(?:\.\d+)?)")
READERS = {"vqa": readers.read_vqa, "snli_ve": readers.read_snli_ve, "vcr": readers.read_vcr}


def parse_regime(regime: str) -> tuple[str, float | None]:
  """("full" | "shift", None) or ("low", percent) of config.regime."""
  if regime in ("full", "shift"):
    return regime, None
  m = _LOW.fullmatch(regime)
  if m and 0 < float(m.group(1)) <= 100:
    return "low", float(m.group(1))
  raise UserError(f"config.regime={regime!r}: expected full, shift or low<percent> with "
                  f"percent in (0, 100], e.g. low0.1, low1, low5, low10.")


def validate(config) -> None:
  """Refuses bad settings before anything is read or written."""
  vl_tasks.check(vl_tasks.Hyper(task=config.task))
  kind, _ = parse_regime(config.regime)
  d = config.data
  if d.source not in SOURCES:
    raise UserError(f"config.data.source={d.source!r}: expected one of {list(SOURCES)}.")
  splits = vl_files.SPLIT_NAMES[config.task]
  for field in ("train_split", "eval_split"):
    if d[field] not in splits:
      raise UserError(f"config.data.{field}={d[field]!r}: expected one of {sorted(splits)} "
                      f"({config.task}'s files name them {sorted(splits.values())}).")
  if d.source == "world" and d.eval_split == "test":
    raise UserError("config.data.eval_split='test': the world writes train and val "
                    "(config.world); evaluate on val.")
  if d.source == "real" and not d.dir:
    raise UserError(f"config.data.dir is empty: give the folder of {config.task}'s files as "
                    "distributed (see configs/vl_finetune.py).")
  if d.source == "real" and kind == "shift" and not d.split_file and config.task != "vqa":
    raise UserError(f"config.regime='shift' on real {config.task} data needs "
                    "config.data.split_file ({\"train\": [ids], \"test\": [ids]}; for VCR "
                    "e.g. from vl.held_out_movies_split).")
  if d.max_length < 4:
    raise UserError(f"config.data.max_length={d.max_length}: give at least 4 tokens.")
  t = config.train
  if t.steps < 0 or (t.steps == 0 and t.epochs <= 0):
    raise UserError(f"config.train.steps={t.steps} / epochs={t.epochs}: give a positive "
                    "number of steps, or steps=0 and positive epochs.")
  if not 0 <= t.warmup_fraction < 1:
    raise UserError(f"config.train.warmup_fraction={t.warmup_fraction}: expected [0, 1).")
  student = vl_student.get_config(config.student.preset, dict(config.student.overrides))
  registry.check(config.evals)
  td = clip_td.from_config(config.distill)
  if td.mode != "none":
    clip_td.check_layer(td, student.num_hidden_layers)


# ------------------------------------------------------------------- files


def task_files(task: str, folder: str, split: str, image_dir: str = "") -> dict:
  """The reader's arguments for a generic split ("train", "val", "test") of
  a task's files under `folder`, by their distributed names."""
  name = vl_files.SPLIT_NAMES[task][split]
  if task == "vqa":
    return {"questions": os.path.join(folder, f"v2_OpenEnded_mscoco_{name}_questions.json"),
            "annotations": os.path.join(folder, f"v2_mscoco_{name}_annotations.json"),
            "image_dir": image_dir or folder}
  if task == "snli_ve":
    return {"path": os.path.join(folder, f"snli_ve_{name}.jsonl"),
            "image_dir": image_dir or os.path.join(folder, "flickr30k_images")}
  return {"path": os.path.join(folder, f"{name}.jsonl"),
          "image_dir": image_dir or os.path.join(folder, "vcr1images")}


def vqacp_files(folder: str, part: str, image_dir: str = "") -> dict:
  """VQA-CP v2's files of `part` ("train" | "test"); images: the COCO folder
  with train2014/ and val2014/ (VQA-CP mixes them)."""
  return {"questions": os.path.join(folder, f"vqacp_v2_{part}_questions.json"),
          "annotations": os.path.join(folder, f"vqacp_v2_{part}_annotations.json"),
          "image_dir": image_dir or folder}


def world_root(config, workdir: str) -> str:
  return config.data.dir or os.path.join(workdir, "data")


def write_world(config, root: str, renderer: str, splits) -> str:
  """The task's world files of `splits` under root/<renderer>/<task>, written
  once (process 0); returns that folder. A folder written with other world
  settings is refused: checkpoints may have been trained on it."""
  task, w = config.task, config.world
  folder = os.path.join(root, renderer, task)
  marker = os.path.join(folder, "world.json")
  want = {"renderer": renderer, "seed": int(w.seed), "image_size": int(w.image_size),
          "sizes": {s: int(w[s]) for s in sorted(set(splits))}}
  if tf.io.gfile.exists(marker):
    have = io_utils.read_json(marker)
    if have != want:
      raise UserError(f"{folder} holds world files written with {have}, but this config asks "
                      f"for {want}; use a new workdir (or config.data.dir), or the world "
                      "settings they were written with.")
  elif jax.process_index() == 0:
    writer = {"vqa": vl_files.write_vqa, "snli_ve": vl_files.write_snli_ve,
              "vcr": vl_files.write_vcr}[task]
    for split, n in want["sizes"].items():
      writer(folder, renderer, n, want["seed"], vl_files.SPLIT_NAMES[task][split],
             want["image_size"])
    io_utils.atomic_write_json(marker, want)     # last: the files are complete
  # Every host, whichever branch it took (the marker may appear between the
  # hosts' checks); once past it, the files are there for all.
  multihost_utils.sync_global_devices(f"vl-world-{renderer}-{task}")
  return folder


def world_tokenizer(root: str) -> str:
  """The world's word-level tokenizer with text pairs (written once)."""
  from zoomshot_jax.demo.tokenizer import save_word_tokenizer  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, "tokenizer")
  if jax.process_index() == 0 and not tf.io.gfile.exists(os.path.join(path, "tokenizer.json")):
    io_utils.atomic_write_dir(path, lambda d: save_word_tokenizer(
        d, vl_text.vocabulary(), 512, pairs=True))
  multihost_utils.sync_global_devices("vl-world-tokenizer")
  return path


def _read(task: str, files: dict, check_images: bool) -> list:
  return READERS[task](**files, check_images=check_images)


@dataclasses.dataclass
class Data:
  """The records of a run: train (after the low-shot cut), the training
  split whole (the VQA vocabulary's), and {set name: records} to evaluate."""
  train: list
  train_split: list
  evals: dict[str, list]
  tokenizer: str


def _unique_ids(records, what: str) -> None:
  ids = [str(r.id) for r in records]
  if len(set(ids)) != len(ids):
    raise UserError(f"{what}: ids repeat across the splits, so a split file cannot name "
                    "examples unambiguously.")


def load_data(config, workdir: str) -> Data:
  """Writes (world) and reads the task's records; see the module docstring."""
  task, d = config.task, config.data
  kind, percent = parse_regime(config.regime)
  check = bool(d.check_images)
  eval_name = vl_files.SPLIT_NAMES[task][d.eval_split]
  if d.source == "world":
    root = world_root(config, workdir)
    clean = write_world(config, root, "clean", [d.train_split, d.eval_split])
    train = _read(task, task_files(task, clean, d.train_split), check)
    evals = {eval_name: _read(task, task_files(task, clean, d.eval_split), check)}
    if kind == "shift":
      photo = write_world(config, root, "photo", [d.eval_split])
      evals[f"{eval_name}_photo"] = _read(task, task_files(task, photo, d.eval_split), check)
    tokenizer = d.tokenizer or world_tokenizer(root)
  else:
    tokenizer = d.tokenizer or REAL_TOKENIZER
    if kind == "shift" and d.split_file:
      both = (_read(task, task_files(task, d.dir, d.train_split, d.image_dir), check)
              + _read(task, task_files(task, d.dir, d.eval_split, d.image_dir), check))
      _unique_ids(both, f"{task} {d.train_split} + {d.eval_split}")
      train, test = protocols.apply_split_file(both, d.split_file)
      evals = {"shift_test": test}
    elif kind == "shift":
      train = _read(task, vqacp_files(d.dir, "train", d.image_dir), check)
      evals = {"vqacp_test": _read(task, vqacp_files(d.dir, "test", d.image_dir), check)}
    else:
      train = _read(task, task_files(task, d.dir, d.train_split, d.image_dir), check)
      evals = {eval_name: _read(task, task_files(task, d.dir, d.eval_split, d.image_dir), check)}
  for name, records in {"training": train, **evals}.items():
    if not records:
      raise UserError(f"the {task} {name} data hold no examples.")
  subset = protocols.low_shot(train, percent, d.subset_seed) if kind == "low" else train
  logging.info("%s: %d training examples (%s) of %d; evaluation: %s.", task, len(subset),
               config.regime, len(train), {k: len(v) for k, v in evals.items()})
  return Data(train=subset, train_split=train, evals=evals, tokenizer=tokenizer)


# -------------------------------------------------------------- vocabulary


def answers_path(workdir: str) -> str:
  return os.path.join(workdir, "answers.json")


def answer_vocab(config, workdir: str, records) -> list[str]:
  """The VQA answer vocabulary of the training split, checked against the
  workdir's (answers.json, written before training)."""
  entries = [{"multiple_choice_answer": r.multiple_choice_answer} for r in records
             if r.multiple_choice_answer is not None]
  answers = vqa_eval.build_answer_vocab(entries, config.data.answer_min_count)
  if not answers:
    raise UserError(f"no answer is the answer of >= config.data.answer_min_count="
                    f"{config.data.answer_min_count} of the {len(entries)} training questions; "
                    "lower it or use more data.")
  path = answers_path(workdir)
  if tf.io.gfile.exists(path):
    saved = io_utils.read_json(path)["answers"]
    if saved != answers:
      diff = sorted(set(saved) ^ set(answers))
      raise UserError(
          f"{path} holds another answer vocabulary ({len(saved)} answers) than this run's "
          f"training data give ({len(answers)}; they differ in e.g. {diff[:5] or 'order'}); "
          "the checkpoints in this workdir were trained for it. Use a new workdir, or the "
          "data and config.data.answer_min_count it was made with.")
  return answers


# ------------------------------------------------------------------- model


def build_model(config, tokenizer, num_answers: int):
  """(module, initial params {"encoder", "head"}, hyper) of the config."""
  s = config.student
  overrides = {"vocab_size": len(tokenizer), **dict(s.overrides)}
  cfg = vl_student.get_config(s.preset, overrides)
  if cfg.vocab_size != len(tokenizer):
    raise UserError(f"config.student.overrides.vocab_size={cfg.vocab_size}, but the tokenizer "
                    f"has {len(tokenizer)} tokens; drop the override.")
  if cfg.max_position_embeddings < config.data.max_length:
    if "max_position_embeddings" in s.overrides:
      raise UserError(f"config.data.max_length={config.data.max_length} exceeds "
                      f"config.student.overrides.max_position_embeddings="
                      f"{cfg.max_position_embeddings}.")
    # The preset's text positions are too few for the task's texts (world_tiny
    # has 32; the world's VCR QA->R texts take 48).
    cfg = dataclasses.replace(cfg, max_position_embeddings=config.data.max_length)
  module, params = vl_student.build(cfg, config.seed)
  if s.bert_checkpoint:
    params, report = vl_weights.load_bert_weights(params, s.bert_checkpoint)
    logging.info("BERT: %s", report.summary())
  if s.vit_checkpoint:
    params, report = vl_weights.load_vit_patch_embedding(params, s.vit_checkpoint)
    logging.info("ViT patch embedding: %s", report.summary())
  hyper = vl_tasks.check(vl_tasks.Hyper(task=config.task, num_answers=num_answers or 1))
  return module, vl_tasks.init(params, cfg, hyper, config.seed), hyper


def total_steps(config, num_items: int) -> int:
  t = config.train
  if t.steps > 0:
    return int(t.steps)
  return max(1, int(t.min_steps), math.ceil(t.epochs * num_items / t.batch_size))


def optimizer(config, total: int):
  """config.optimizer, its warm-up config.train.warmup_fraction of the steps
  unless optimizer.warmup_steps gives it."""
  cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
  if not cfg.warmup_steps:
    cfg.warmup_steps = int(round(config.train.warmup_fraction * total))
  return training.make_optimizer(cfg, total)


def train(config, workdir: str, module, hyper, params, inputs: pipeline.Inputs, records, mesh,
          hooks=(), teacher=None) -> dict:
  """Trains; returns the final state (resumes from workdir/checkpoints).
  With a teacher (CLIP-TD), params carry the projections and the loss the
  distillation term."""
  t = config.train
  share = pipeline.host_share(records, jax.process_index(), jax.process_count())
  cols = pipeline.columns(inputs, share, train=True)
  pipeline.check_lengths(inputs, cols, "training texts")
  extra = None
  if teacher is not None:
    with console.stage("teacher outputs"):
      cache = teacher_cache.build(teacher, inputs, cols,
                                  sharding.local_batch_size(t.batch_size, mesh),
                                  config.distill.teacher_cache_gb)
    if cache is not None:   # the step reads them: no teacher fields in the batches
      inputs, extra = dataclasses.replace(inputs, teacher=None), teacher_cache.lookup(cache)
  batches = pipeline.TrainBatches(inputs, cols, t.batch_size, config.seed, mesh, extra=extra)
  num_items = len(records) * (2 if config.task == "vcr" else 1)   # vcr: Q->A and QA->R
  total = total_steps(config, num_items)
  frozen, model_state = {}, {}
  if teacher is None:
    inner = vl_tasks.make_loss_fn(hyper, module)
  else:
    inner = clip_td.make_loss_fn(clip_td.from_config(config.distill, total), hyper, module, teacher)
    frozen, model_state = {"clip": teacher.clip.params}, {"step": jnp.zeros((), jnp.int32)}

  def loss_fn(p, model_state, batch, frozen, rng):
    batch = {**batch, "image": inputs.spec.normalize(batch["image"]),
             "teacher_image": batch["image"]}
    return inner(p, model_state, batch, frozen, rng)

  logging.info("Training %s on %d items: %d steps of %d.", config.task, num_items, total,
               t.batch_size)
  return training.fit(
      loss_fn, params, frozen, batches, total, optimizer(config, total), mesh,
      os.path.join(workdir, "checkpoints"), model_state=model_state, batch_size=t.batch_size,
      seed=config.seed,
      checkpoint_every=t.checkpoint_every, keep=t.keep_checkpoints, log_every=t.log_every,
      metadata=config.to_dict(), hooks=hooks, name="train", logdir=workdir)


def run(config: ml_collections.ConfigDict, workdir: str, hooks=()) -> dict:
  validate(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.local_batch_size(config.train.batch_size, mesh, "train.batch_size")
  for name, e in config.evals.items():
    sharding.local_batch_size(e.batch_size, mesh, f"evals.{name}.batch_size")
  with console.stage("prepare data"):
    data = load_data(config, workdir)
    answers = answer_vocab(config, workdir, data.train_split) if config.task == "vqa" else None
    tokenizer = pipeline.load_tokenizer(data.tokenizer)
    s = vl_student.get_config(config.student.preset, dict(config.student.overrides))
    inputs = pipeline.Inputs(config.task, tokenizer, config.data.max_length,
                             pipeline.image_spec(s.image_size, config.data.image_mean,
                                                 config.data.image_std),
                             tuple(answers) if answers else None)
    module, params, hyper = build_model(config, tokenizer, len(answers or ()))
    teacher = None
    if config.distill.mode != "none":
      teacher, teacher_text = teacher_lib.load(config.distill, config.data.source,
                                               module.config)
      params = clip_td.init(params, module.config.hidden_size, teacher.dim, config.seed)
      train_inputs = dataclasses.replace(inputs, teacher=teacher_text)
    else:
      train_inputs = inputs
    # Everything is checked: only now does the workdir get the run's record.
    if jax.process_index() == 0:
      io_utils.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
      if answers is not None:
        io_utils.atomic_write_json(answers_path(workdir), {
            "answers": answers, "min_count": config.data.answer_min_count,
            "num_questions": len(data.train_split)})
  with console.stage("train"):
    state = train(config, workdir, module, hyper, params, train_inputs, data.train, mesh, hooks,
                  teacher)
  with console.stage("evaluate"):
    # The exported model: CLIP-TD's projections are training-only.
    model = vl_evaluate.VLModel(module, hyper, clip_td.export(state["params"]), inputs,
                                data.evals)
    results = registry.run(config.evals, model, mesh, workdir)
    write_results(workdir, {"": results})
  return {"results": results, "params": jax.device_get(clip_td.export(state["params"])),
          "answers": answers}
