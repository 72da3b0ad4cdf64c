"""The feature cache: frozen encoders run once over the training images.

Stage `extract` encodes every selected image with the vision encoder (its own
preprocessing) and with CLIP's image tower (CLIP's preprocessing) and writes
the features to `<cache>/<part>/shard-NNNNN.npz` ({"vision": [n, m],
"clip": [n, d]} in the storage dtype) beside a `manifest.json` saying which
encoders, pooling, dims, dataset, split, fraction and seed made them.

Shards are global ranges of the selected examples, encoded by all hosts
together (each host reads its contiguous part) and written by process 0 with
an atomic rename, so a stopped extraction resumes at the first missing shard,
and a cache made on 1 host is the cache made on 64.
"""

from __future__ import annotations

import functools
import math
import os
import time

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils

from zoomshot_jax import console, data, io_utils, sharding
from zoomshot_jax.encoders import CLIP, VisionEncoder
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "zoomshot_jax.features/1"


def encoder_identity(vision: VisionEncoder, clip: CLIP) -> dict:
  """What made the features: checked against the config before any reuse."""
  return {
      "vision": {"name": vision.name, "checkpoint": vision.checkpoint,
                 "pooling": vision.pooling, "dim": vision.dim,
                 "fingerprint": _fingerprint(vision.variables)},
      "clip": {"checkpoint": clip.checkpoint, "dim": clip.dim,
               "fingerprint": _fingerprint(clip.params)},
  }


def _fingerprint(tree) -> str:
  # Weights, not paths: a checkpoint retrained in place must not reuse features.
  return params_lib.fingerprint(tree)[:16]


def select_examples(total: int, fraction: float, heldout: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Seeded, disjoint (train, held-out) example indices of a split, each sorted.

  `fraction` of the split (at least one example) for training; `heldout`
  other examples for held-out metrics.
  """
  if not 0 < fraction <= 1:
    raise UserError(f"config.train_fraction={fraction} must be in (0, 1], e.g. 0.2.")
  n_train = max(1, round(fraction * total))
  if n_train + heldout > total:
    heldout = total - n_train
    logging.warning("Only %d examples are left for held-out metrics.", heldout)
  perm = np.random.default_rng(seed).permutation(total)
  return np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + heldout])


def _shard_path(directory: str, index: int) -> str:
  return os.path.join(directory, f"shard-{index:05d}.npz")


def _check_manifest(directory: str, expected: dict) -> dict | None:
  """The existing manifest if it matches `expected`, None if there is none."""
  path = os.path.join(directory, MANIFEST)
  if not tf.io.gfile.exists(path):
    return None
  found = io_utils.read_json(path)
  diffs = [f"{k}: cache has {found.get(k)!r}, config gives {v!r}"
           for k, v in expected.items() if found.get(k) != v]
  if diffs:
    raise UserError(
        f"feature cache {directory} was made with other settings than this run's "
        f"({'; '.join(diffs)}). Point config.cache_dir elsewhere, or delete the "
        "directory to extract again.")
  return found


def _extract_step(vision: VisionEncoder, clip: CLIP, mesh):
  rows, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)

  @functools.partial(jax.jit, in_shardings=(rep, rep, rows, rows),
                     out_shardings=(rows, rows))
  def step(vision_vars, clip_params, vision_images, clip_images):
    return (vision.image_features(vision_vars, vision_images),
            clip.image_features(clip_params, clip_images))

  return step


def extract(source: data.Source, vision: VisionEncoder, clip: CLIP, mesh, directory: str,
            description: dict, batch_size: int, shard_size: int, storage_dtype: str,
            identity: dict | None = None) -> dict:
  """Writes the missing shards of `source`'s features; returns the manifest.

  Args:
    source: the selected examples (e.g. `Source.subset`), read in order.
    description: dataset, split, fraction, seed... recorded in the manifest.
    batch_size: global batch; shard_size: examples per shard file.
    identity: `encoder_identity(vision, clip)` if the caller has it (it
      hashes every weight).
  """
  n = source.size()
  expected = {"format": FORMAT, "encoders": identity or encoder_identity(vision, clip),
              "num_examples": n, "shard_size": shard_size, "dtype": storage_dtype,
              **description}
  manifest = _check_manifest(directory, expected)
  if manifest and manifest.get("complete"):
    logging.info("Feature cache %s is complete (%d examples).", directory, n)
    return manifest
  if jax.process_index() == 0 and manifest is None:
    io_utils.atomic_write_json(os.path.join(directory, MANIFEST),
                               {**expected, "complete": False})
  num_shards = math.ceil(n / shard_size)
  # Every host decides from the same files, after the same barrier.
  multihost_utils.sync_global_devices(f"extract-start:{directory}")
  todo = [s for s in range(num_shards) if not tf.io.gfile.exists(_shard_path(directory, s))]
  logging.info("Extracting %d of %d shards of %d examples into %s.", len(todo), num_shards,
               shard_size, directory)
  step = _extract_step(vision, clip, mesh)
  vision_vars = sharding.replicate(vision.variables, mesh)
  clip_params = sharding.replicate(clip.params, mesh)
  views = {"vision": vision.preprocess, "clip": clip.preprocess}
  local_bs = sharding.local_batch_size(batch_size, mesh, "extract_batch_size")
  rows = sharding.batch_sharding(mesh)
  start, done_examples = time.time(), 0
  for k, s in enumerate(todo):
    part = source.subset(np.arange(s * shard_size, min(n, (s + 1) * shard_size)))
    ds, _, _ = data.eval_batches(part, views, local_bs, jax.process_index(),
                                 jax.process_count(), agree_steps=sharding.host_max)
    outs = {"vision": [], "clip": [], "mask": []}
    for batch in data.as_numpy(ds, f"training images of {source.name!r}"):
      g = sharding.to_global({"v": batch["vision"], "c": batch["clip"]}, rows)
      v, c = step(vision_vars, clip_params, g["v"], g["c"])
      outs["vision"].append(sharding.local_rows(v).astype(storage_dtype))
      outs["clip"].append(sharding.local_rows(c).astype(storage_dtype))
      outs["mask"].append(batch["mask"])
    mask = np.concatenate(outs.pop("mask"))
    arrays = sharding.gather_rows({k: np.concatenate(v) for k, v in outs.items()},
                                  mask)  # the shard, in example order
    if not all(np.isfinite(a.astype(np.float32)).all() for a in arrays.values()):
      raise UserError(f"shard {s} of {directory}: the encoders produced NaN/Inf features "
                      f"(dtype {storage_dtype}); float16 overflows above 65504 - try "
                      "config.feature_dtype='float32'.")
    if jax.process_index() == 0:
      io_utils.atomic_save_npz(_shard_path(directory, s), **arrays)
    multihost_utils.sync_global_devices(f"extract-shard:{directory}:{s}")
    done_examples += len(arrays["vision"])
    elapsed = time.time() - start
    rate = done_examples / elapsed
    remaining = sum(min(n, (t + 1) * shard_size) - t * shard_size for t in todo[k + 1:])
    console.progress(f"extract {os.path.basename(directory)}", s + 1, num_shards,
                     remaining / max(rate, 1e-9), f"{rate:.1f} images/s")
  manifest = {**expected, "complete": True}
  if jax.process_index() == 0:
    io_utils.atomic_write_json(os.path.join(directory, MANIFEST), manifest)
  multihost_utils.sync_global_devices(f"extract-done:{directory}")
  return manifest


def load(directory: str, encoders: dict | None = None) -> dict[str, np.ndarray]:
  """All features of a complete cache: {"vision": [n, m], "clip": [n, d]}.

  Args:
    encoders: `encoder_identity(...)` of this run's encoders; a cache made by
      other encoders is refused.
  """
  path = os.path.join(directory, MANIFEST)
  if not tf.io.gfile.exists(path):
    raise UserError(f"no feature cache at {directory} ({MANIFEST} missing); run the "
                    "'extract' stage first (config.stages).")
  manifest = io_utils.read_json(path)
  if not manifest.get("complete"):
    raise UserError(f"feature cache {directory} is incomplete (extraction stopped); run "
                    "the 'extract' stage again to finish it.")
  if encoders is not None and manifest["encoders"] != encoders:
    raise UserError(
        f"feature cache {directory} was made by other encoders than the config names: "
        f"cache {_describe(manifest['encoders'])} vs config {_describe(encoders)}. "
        "Point config.cache_dir elsewhere or delete the cache.")
  num_shards = math.ceil(manifest["num_examples"] / manifest["shard_size"])
  parts = {"vision": [], "clip": []}
  for s in range(num_shards):
    p = _shard_path(directory, s)
    if not tf.io.gfile.exists(p):
      raise UserError(f"feature cache {directory}: {os.path.basename(p)} is missing; run "
                      "the 'extract' stage again.")
    z = io_utils.load_npz(p)
    for key in parts:
      parts[key].append(z[key])
  out = {key: np.concatenate(v) for key, v in parts.items()}
  if len(out["vision"]) != manifest["num_examples"]:
    raise UserError(f"feature cache {directory} holds {len(out['vision'])} rows, its "
                    f"manifest says {manifest['num_examples']}; extract it again.")
  return out


def _describe(identity: dict) -> str:
  v, c = identity["vision"], identity["clip"]
  return (f"(vision {v['name']}:{v['checkpoint']} pooling={v['pooling']} dim={v['dim']} "
          f"weights {v['fingerprint']}; clip {c['checkpoint']} dim={c['dim']} "
          f"weights {c['fingerprint']})")


def moments(x: np.ndarray, chunk: int = 65536) -> dict:
  """Float64 sums over all entries of [n, dim] features, for `linear.alignment_scale`."""
  total = total_sq = 0.0
  for i in range(0, len(x), chunk):
    b = x[i:i + chunk].astype(np.float64)
    total += float(b.sum())
    total_sq += float(np.square(b).sum())
  return {"sum": total, "sumsq": total_sq, "entries": int(x.size), "rows": int(len(x))}
