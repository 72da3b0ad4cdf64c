"""Evaluators by name: `config.evals.<name>.type` picks one (as big_vision does).

An evaluator is `evaluate(cfg, model, mesh, workdir, name) -> {dataset: metrics}`,
with `cfg` its own config group (`config.evals.<name>`) and `model` what the
program evaluates, of the kind that evaluator takes. Every program runs its
`config.evals` through `run`, so a VQA or SNLI-VE evaluator joins by adding an
entry to EVALUATORS and a group to a config.

  zeroshot_classification   top-1/top-5 with CLIP's prompt-ensembled classifier
                            on tfds datasets and image folders; model: `Model`
                            (image features in CLIP space and the CLIP whose
                            text tower makes the classifiers)
  asif_classification       ASIF's top-1/top-5 against an anchor store;
                            model: `asif.evaluate.AsifModel`
  vl_task                   VQA / SNLI-VE / VCR official metrics of a
                            fine-tuned VL student; model: `vl.evaluate.VLModel`
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from zoomshot_jax import data, encoders, evaluation, io_utils, sharding
from zoomshot_jax.encoders.preprocessing import PreprocessSpec
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation.results import predictions_path


@dataclasses.dataclass
class Model:
  """What an evaluator evaluates: defaults to CLIP's own image tower."""

  clip: encoders.CLIP
  feature_fn: Callable[[Any, jax.Array], jax.Array] | None = None
  variables: Any = None
  preprocess: PreprocessSpec | None = None

  def __post_init__(self):
    if self.feature_fn is None:
      self.feature_fn, self.variables = self.clip.image_features, self.clip.params
      self.preprocess = self.clip.preprocess


def parse_datasets(spec: str, field: str = "datasets") -> list[str]:
  names = [d.strip() for d in spec.split(",") if d.strip()]
  if not names:
    raise UserError(f"config.{field} is empty; give comma-separated tfds names or "
                    f"folder:<path>, e.g. {','.join(evaluation.known_datasets()[:3])}.")
  return names


def datasets(cfg, name: str) -> list[str]:
  """The datasets of evaluator group `config.evals.<name>`, with its class-name
  override checked (it names the classes of one dataset)."""
  names = parse_datasets(cfg.datasets, f"evals.{name}.datasets")
  if cfg.classnames_file and len(names) != 1:
    raise UserError(f"config.evals.{name}.classnames_file applies to one dataset, but "
                    f"config.evals.{name}.datasets names {len(names)}: {names}.")
  return names


def resolve_cache_dir(value: str) -> str | None:
  """The classifier cache: "none" = off, "" = $ZOOMSHOT_CACHE or ~/.cache/zoomshot_jax."""
  if value == "none":
    return None
  return value or evaluation.classifier.default_cache_dir()


def zeroshot_classification(cfg, model: Model, mesh, workdir: str | None = None,
                            name: str = "zeroshot") -> dict[str, dict]:
  """Zero-shot top-1/top-5 of `model` on every dataset of `cfg.datasets`."""
  sharding.local_batch_size(cfg.batch_size, mesh, f"evals.{name}.batch_size")
  names = datasets(cfg, name)
  variables = sharding.replicate(model.variables, mesh)  # placed once for every dataset
  results = {}
  for dataset in names:
    split = (evaluation.DEFAULT_SPLITS.get(dataset, "test")
             if cfg.split == "default" else cfg.split)
    source = data.get_source(dataset, split, cfg.data_dir or None, cfg.tfds_download,
                             cfg.verify_images)
    prompts = evaluation.get_prompts(dataset, source.num_classes, source.label_names,
                                     cfg.classnames_file, cfg.templates_file,
                                     tuple(cfg.get("templates", ())))
    w = evaluation.build_classifier(model.clip, prompts, cfg.text_batch_size,
                                    resolve_cache_dir(cfg.cache_dir))
    res = evaluation.evaluate(model.feature_fn, variables, model.preprocess, w,
                              model.clip.logit_scale, source, mesh, cfg.batch_size,
                              keep_logits=cfg.save_predictions)
    results[dataset] = res.as_dict()
    if cfg.save_predictions and workdir and jax.process_index() == 0:
      io_utils.atomic_save_npz(predictions_path(workdir, dataset), labels=res.labels,
                               logits=res.logits)
  return results


def asif_classification(cfg, model, mesh, workdir: str | None = None,
                        name: str = "asif") -> dict[str, dict]:
  # Imported here: the other programs need none of ASIF's machinery.
  from zoomshot_jax.asif import evaluate as asif_evaluate  # pylint: disable=g-import-not-at-top
  return asif_evaluate.classification(cfg, model, mesh, workdir, name)


def vl_task(cfg, model, mesh, workdir: str | None = None, name: str = "vl") -> dict[str, dict]:
  from zoomshot_jax.vl import evaluate as vl_evaluate  # pylint: disable=g-import-not-at-top
  return vl_evaluate.evaluate(cfg, model, mesh, workdir, name)


EVALUATORS = {"zeroshot_classification": zeroshot_classification,
              "asif_classification": asif_classification, "vl_task": vl_task}


def check(evals) -> None:
  """Refuses unknown evaluator types before anything heavy runs."""
  for name, cfg in evals.items():
    if cfg.get("type") not in EVALUATORS:
      raise UserError(f"config.evals.{name}.type={cfg.get('type')!r}: expected one of "
                      f"{sorted(EVALUATORS)}.")


def run(evals, model: Model, mesh, workdir: str | None = None) -> dict[str, dict]:
  """Every evaluator of `config.evals` on `model`: {dataset: metrics}, merged."""
  check(evals)
  out: dict[str, dict] = {}
  for name, cfg in evals.items():
    results = EVALUATORS[cfg.type](cfg, model, mesh, workdir, name=name)
    clash = set(results) & set(out)
    if clash:
      raise UserError(f"config.evals.{name} evaluates {sorted(clash)} again; each dataset "
                      "once across config.evals.")
    out.update(results)
  return out
