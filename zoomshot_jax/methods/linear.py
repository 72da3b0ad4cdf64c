"""Linear maps with bias between feature spaces, and the variance alignment.

A map is a dict {"kernel": [in, out], "bias": [out]}: y = x @ kernel + bias.
Both methods train their maps on *aligned* features `c_v V(x)` and `c_I I(x)`
(METHODS.md §1): one scalar per space makes every entry's variance 4.5, so the
same learning rate suits any pair of encoders. `fold` turns a map trained on
aligned features into one on raw features.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Text-to-Concept's target variance per entry (METHODS.md §1, verified in code).
TARGET_VARIANCE = 4.5
_HIGHEST = jax.lax.Precision.HIGHEST


def init(key: jax.Array, in_dim: int, out_dim: int) -> dict:
  """PyTorch nn.Linear's init, U(-1/sqrt(in), 1/sqrt(in)) for both leaves,
  so that the reference recipe starts from the same distribution."""
  bound = 1.0 / math.sqrt(in_dim)
  k1, k2 = jax.random.split(key)
  return {"kernel": jax.random.uniform(k1, (in_dim, out_dim), jnp.float32, -bound, bound),
          "bias": jax.random.uniform(k2, (out_dim,), jnp.float32, -bound, bound)}


def apply(p: dict, x: jax.Array) -> jax.Array:
  """[B, in] -> [B, out]. Full float32 precision: on TPU the default would
  round the inputs to bfloat16, which costs R² on a map this small."""
  return jnp.dot(x.astype(jnp.float32), p["kernel"], precision=_HIGHEST) + p["bias"]


def alignment_scale(total: float, total_sq: float, count: int) -> float:
  """c = sqrt(4.5 / Var), Var over *all entries* (one scalar per space).

  Args:
    total, total_sq: sum and sum of squares of every entry (float64 sums).
    count: number of entries (rows x dim).
  """
  mean = total / count
  var = total_sq / count - mean * mean
  if not np.isfinite(var) or var <= 0:
    raise ValueError(f"feature variance is {var}; the features are constant or broken.")
  return math.sqrt(TARGET_VARIANCE / var)


def rms_norm(total_sq: float, rows: int, scale: float) -> float:
  """sqrt(E ||scale * z||^2) of rows z, from the sum of squared entries."""
  return math.sqrt(total_sq / rows) * scale


def fold(p: dict, in_scale: float, out_scale: float) -> dict:
  """The map on raw features equal to `p` on aligned ones.

  p acts as y' = A x' + b with x' = c_in x, y' = c_out y, so on raw features
  y = (A c_in x + b) / c_out: kernel * c_in / c_out and bias / c_out.
  (The Text-to-Concept reference rescales the bias by c_in / c_out, which is
  wrong unless c_in = 1; METHODS.md §1.)
  """
  return {"kernel": np.asarray(p["kernel"], np.float64) * (in_scale / out_scale),
          "bias": np.asarray(p["bias"], np.float64) / out_scale}


def r2_sums(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> dict:
  """Sums for R² = 1 - SS_res / SS_tot, pooled over every entry.

  Returned as sums (residual, target, target squared, rows) so that batches,
  devices and hosts can be added up before the ratio is taken.
  """
  w = jnp.ones(pred.shape[0]) if mask is None else mask.astype(jnp.float32)
  res = jnp.sum(w[:, None] * jnp.square(pred - target))
  return {"res": res, "sum": jnp.sum(w[:, None] * target, axis=0),
          "sumsq": jnp.sum(w[:, None] * jnp.square(target)), "n": jnp.sum(w)}


def r2_from_sums(s: dict) -> float:
  n = float(s["n"])
  total = np.asarray(s["sum"], np.float64)
  ss_tot = float(s["sumsq"]) - float(np.sum(total * total)) / n
  return 1.0 - float(s["res"]) / ss_tot
