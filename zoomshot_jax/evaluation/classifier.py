"""The zero-shot classifier W of CLIP's prompt ensembling (METHODS.md, notation).

w_k = norm(mean_j norm(T(template_j(classname_k)))), W = [w_1..w_K] in R^{K x d}.
Text features are computed in jitted, fixed-shape batches sharded over this
host's devices (no cross-host collective: every host can build or load W on
its own), and W is cached on disk under a hash of (CLIP text-tower weights and
tokenizer, class names, templates, dtype).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from zoomshot_jax import console, io_utils, sharding
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.clip import CLIP
from zoomshot_jax.evaluation.classnames import Prompts
from zoomshot_jax.ops import l2_normalize


def default_cache_dir() -> str:
  return os.environ.get("ZOOMSHOT_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "zoomshot_jax"))


def _text_fingerprint(clip: CLIP) -> str:
  """Hash of the text tower's weights, tokenizer vocabulary and dtype (memoised)."""
  fp = getattr(clip, "_text_fingerprint", None)
  if fp is None:
    vocab = json.dumps(sorted(clip.tokenizer.get_vocab().items()))
    text_params = {k: v for k, v in clip.params.items() if k.startswith("text")}
    fp = params_lib.fingerprint(text_params, extra=vocab + clip.dtype)
    clip._text_fingerprint = fp  # pylint: disable=protected-access
  return fp


def cache_key(clip: CLIP, prompts: Prompts) -> str:
  blob = json.dumps({"clip": _text_fingerprint(clip),
                     "classnames": list(prompts.classnames),
                     "templates": list(prompts.templates)})
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


def encode_texts(clip: CLIP, texts: list[str], batch_size: int = 256) -> np.ndarray:
  """L2-normalised text embeddings [n, d] float32, in jitted batches."""
  mesh = sharding.local_mesh()
  n_dev = mesh.devices.size
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  tokens = clip.tokenize(texts)
  n = len(texts)
  n_pad = math.ceil(n / batch_size) * batch_size - n
  # Padding rows copy row 0 (a valid prompt) and are dropped afterwards.
  tokens = {k: np.concatenate([v, np.repeat(v[:1], n_pad, 0)]) for k, v in tokens.items()}
  rows = NamedSharding(mesh, P("data"))
  params = jax.device_put(clip.params, NamedSharding(mesh, P()))

  @functools.partial(jax.jit, in_shardings=(NamedSharding(mesh, P()), rows, rows),
                     out_shardings=rows)
  def encode(params, ids, mask):
    return l2_normalize(clip.text_features(params, ids, mask))

  out, start = [], time.time()
  for i in range(0, n + n_pad, batch_size):
    # The mesh is this host's alone, so device_put may place host data on it.
    out.append(encode(params, *jax.device_put((tokens["input_ids"][i:i + batch_size],
                                               tokens["attention_mask"][i:i + batch_size]),
                                              rows)))
    if len(out) > 2:
      # Two batches in flight hide dispatch; an unbounded queue of sharded
      # computations can starve XLA's CPU thread pool (many fake devices).
      out[-3].block_until_ready()
    if i and i % (50 * batch_size) == 0:
      rate = i / (time.time() - start)
      console.progress("text features", i, n, (n - i) / rate, f"{rate:.0f} prompts/s")
  return np.concatenate([np.asarray(o) for o in out])[:n]


def build_classifier(clip: CLIP, prompts: Prompts, batch_size: int = 256,
                     cache_dir: str | None = None) -> np.ndarray:
  """W [K, d] float32 for `prompts`; read from / written to the cache if given."""
  path = None
  if cache_dir:
    path = os.path.join(cache_dir, "classifiers", f"{cache_key(clip, prompts)}.npy")
    if tf.io.gfile.exists(path):
      w = io_utils.load_npy(path)
      if w.shape == (len(prompts.classnames), clip.dim):
        logging.info("Classifier from cache %s.", path)
        return w
  k, j = len(prompts.classnames), len(prompts.templates)
  logging.info("Building the classifier: %d classes x %d templates.", k, j)
  t = encode_texts(clip, prompts.texts(), batch_size).reshape(k, j, -1)
  w = np.asarray(l2_normalize(jnp.asarray(t).mean(axis=1)), np.float32)
  if path:  # every host: caches may be host-local; the rename is atomic
    io_utils.atomic_save_npy(path, w)
  return w
