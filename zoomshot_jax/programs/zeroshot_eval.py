"""Zero-shot evaluation of a CLIP on tfds datasets and image folders.

Writes into the workdir:
  config.json                 the config, as run
  results.json                {dataset: {"top1", "top5" (percent), "num_examples"}}
  predictions/<dataset>.npz   with save_predictions: `labels` [n], `logits` [n, K]
  events.out.tfevents.*       TensorBoard scalars <dataset>/top1, <dataset>/top5
"""

from __future__ import annotations

import os
import re

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from zoomshot_jax import data, encoders, evaluation, io_utils, sharding
from zoomshot_jax.errors import UserError


def parse_datasets(spec: str) -> list[str]:
  names = [d.strip() for d in spec.split(",") if d.strip()]
  if not names:
    raise UserError("config.datasets is empty; give comma-separated tfds names or "
                    f"folder:<path>, e.g. {','.join(evaluation.known_datasets()[:3])}.")
  return names


def resolve_cache_dir(value: str) -> str | None:
  if value == "none":
    return None
  return value or evaluation.classifier.default_cache_dir()


def results_table(results: dict[str, dict]) -> str:
  width = max([len("dataset")] + [len(k) for k in results])
  lines = [f"{'dataset':<{width}}  {'top1 %':>7}  {'top5 %':>7}  {'examples':>9}"]
  for name, r in results.items():
    lines.append(f"{name:<{width}}  {r['top1']:>7.2f}  {r['top5']:>7.2f}  {r['num_examples']:>9d}")
  return "\n".join(lines)


def predictions_path(workdir: str, dataset: str) -> str:
  return os.path.join(workdir, "predictions", re.sub(r"[^\w.\-]+", "_", dataset) + ".npz")


def evaluate_clip(config: ml_collections.ConfigDict, clip: encoders.CLIP, mesh,
                  feature_fn=None, variables=None, preprocess=None, workdir: str | None = None,
                  ) -> dict[str, dict]:
  """Evaluates `feature_fn` (default: CLIP's image tower) on `config.datasets`.

  The classifier always comes from `clip`'s text tower; other programs pass a
  mapped vision encoder as `feature_fn` to evaluate it in CLIP space.
  """
  feature_fn = feature_fn or clip.image_features
  variables = clip.params if variables is None else variables
  preprocess = preprocess or clip.preprocess
  names = parse_datasets(config.datasets)
  if config.classnames_file and len(names) != 1:
    raise UserError(f"config.classnames_file applies to one dataset, but "
                    f"config.datasets names {len(names)}: {names}.")
  variables = evaluation.zeroshot.replicate(variables, mesh)  # once for all datasets
  results = {}
  for name in names:
    split = (evaluation.DEFAULT_SPLITS.get(name, "test")
             if config.split == "default" else config.split)
    source = data.get_source(name, split, config.data_dir or None, config.tfds_download,
                             config.verify_images)
    prompts = evaluation.get_prompts(name, source.num_classes, source.label_names,
                                     config.classnames_file, config.templates_file)
    w = evaluation.build_classifier(clip, prompts, config.text_batch_size,
                                    resolve_cache_dir(config.cache_dir))
    res = evaluation.evaluate(feature_fn, variables, preprocess, w, clip.logit_scale,
                              source, mesh, config.batch_size,
                              keep_logits=config.save_predictions)
    results[name] = res.as_dict()
    if config.save_predictions and workdir and jax.process_index() == 0:
      io_utils.atomic_save_npz(predictions_path(workdir, name), labels=res.labels,
                               logits=res.logits)
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  mesh = sharding.make_mesh(config.mesh)
  clip = encoders.load_clip(config.clip, config.dtype, random_init=config.random_init)
  logging.info("CLIP %s: d=%d, logit scale %.2f, %d devices.", config.clip, clip.dim,
               clip.logit_scale, mesh.devices.size)
  results = evaluate_clip(config, clip, mesh, workdir=workdir)
  write_results(workdir, {"": results})
  return results


def write_results(workdir: str, groups: dict[str, dict[str, dict]]) -> None:
  """results.json, TensorBoard scalars and a printed table (process 0 only).

  Args:
    groups: {group: {dataset: {"top1", "top5", "num_examples"}}}; the group
      "" alone writes {dataset: ...} (one model), otherwise {group: {...}}
      (e.g. a mapped encoder and CLIP).
  """
  if jax.process_index() != 0:
    return
  writer = metric_writers.create_default_writer(workdir)
  writer.write_scalars(0, {"/".join(p for p in (group, name, k) if p): r[k]
                           for group, results in groups.items()
                           for name, r in results.items() for k in ("top1", "top5")})
  writer.close()
  single = list(groups) == [""]
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"),
                             groups[""] if single else groups)
  for group, results in groups.items():
    print((f"== {group}\n" if group else "") + results_table(results), flush=True)
