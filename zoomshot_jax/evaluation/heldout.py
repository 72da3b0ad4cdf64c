"""Held-out metrics of a map into CLIP's space, during and after training.

R² of h(c_v V) against c_I I over every entry (scale-free), and the top-1
agreement between the mapped encoder's and CLIP's own zero-shot classes on
the training dataset's class vectors (METHODS.md §1-2; the held-out set is
ours). Sums are taken on device over the batch axis, so devices and hosts
add up before the ratio.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zoomshot_jax import sharding
from zoomshot_jax.methods import linear, losses


def map_evaluator(vision: np.ndarray, clip: np.ndarray, vision_scale: float,
                  clip_scale: float, classes: np.ndarray, logit_scale: float, mesh):
  """params -> {"heldout/r2", "heldout/agreement"} for params["h"].

  Args:
    vision, clip: [n, m], [n, d] raw features of the same held-out images
      (every host holds all of them).
    classes: W [K, d], unit rows.
  """
  n_dev = mesh.devices.size
  n = len(vision)
  pad = (-n) % n_dev
  mask = np.arange(n + pad) < n
  rows, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  lo, hi = sharding.contiguous_rows(n + pad, jax.process_index(), jax.process_count())

  def padded(x):
    return np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])[lo:hi]

  g = sharding.to_global({"v": padded(vision), "c": padded(clip), "m": mask[lo:hi]}, rows)
  w = sharding.replicate(np.asarray(classes, np.float32), mesh)

  @functools.partial(jax.jit, in_shardings=(rep, rows, rows, rows, rep), out_shardings=rep)
  def sums(params, v, c, m, w):
    v = v.astype(jnp.float32) * vision_scale
    c = c.astype(jnp.float32) * clip_scale
    hv = linear.apply(params["h"], v)
    s = linear.r2_sums(hv, c, m)
    agree = jnp.argmax(losses.cosine_logits(hv, w, logit_scale), -1) == \
        jnp.argmax(losses.cosine_logits(c, w, logit_scale), -1)
    s["agree"] = jnp.sum(agree & m)
    return s

  def evaluate(params) -> dict:
    s = jax.device_get(sums(params, g["v"], g["c"], g["m"], w))
    return {"heldout/r2": linear.r2_from_sums(s),
            "heldout/agreement": float(s["agree"]) / float(s["n"])}

  return evaluate
