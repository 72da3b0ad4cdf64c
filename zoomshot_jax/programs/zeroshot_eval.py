"""Zero-shot evaluation of a CLIP on tfds datasets and image folders.

The evaluators of `config.evals` (zoomshot_jax/evaluation/registry.py) run on
CLIP's own image tower. Writes into the workdir:
  config.json                 the config, as run
  results.json                {dataset: {"top1", "top5" (percent), "num_examples"}}
  predictions/<dataset>.npz   with save_predictions: `labels` [n], `logits` [n, K]
  events.out.tfevents.*       TensorBoard scalars <dataset>/top1, <dataset>/top5
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from zoomshot_jax import encoders, io_utils, sharding
from zoomshot_jax.evaluation import registry
from zoomshot_jax.evaluation.results import write_results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  registry.check(config.evals)
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(workdir, "config.json"), config.to_dict())
  mesh = sharding.make_mesh(config.mesh)
  clip = encoders.load_clip(config.clip, config.dtype, random_init=config.random_init)
  logging.info("CLIP %s: d=%d, logit scale %.2f, %d devices.", config.clip, clip.dim,
               clip.logit_scale, mesh.devices.size)
  results = registry.run(config.evals, registry.Model(clip), mesh, workdir)
  write_results(workdir, {"": results})
  return results
