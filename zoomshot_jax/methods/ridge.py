"""Text-to-Concept's map in closed form: one pass over the data, then a solve.

The SGD recipe (METHODS.md §1: coupled weight decay `wd`, MSE averaged over
rows and dims) converges to the minimiser of

  L(A, b) = 1/(n d) sum_i ||A x_i + b - y_i||^2 + wd/2 (||A||^2 + ||b||^2).

With X1 = [X, 1] the normal equations are (X1^T X1 + lam I) beta = X1^T Y,
lam = wd n d / 2. X1^T X1 [m+1, m+1] and X1^T Y [m+1, d] are sums over rows:
each batch's share is computed on device (the batch is sharded, so XLA adds
the devices' and hosts' partial sums), and batches are added on the host in
float64 before the solve.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from zoomshot_jax import sharding

_HIGHEST = jax.lax.Precision.HIGHEST


def _batch_sums(x, y, mask):
  """[B, m], [B, d], [B] -> X1^T X1 [m+1, m+1], X1^T Y [m+1, d]; masked rows add 0."""
  w = mask.astype(jnp.float32)[:, None]
  x1 = jnp.concatenate([x.astype(jnp.float32), jnp.ones_like(w)], axis=1) * w
  return (jnp.dot(x1.T, x1, precision=_HIGHEST),
          jnp.dot(x1.T, y.astype(jnp.float32), precision=_HIGHEST))


@functools.lru_cache(maxsize=8)
def _sums_fn(mesh: Mesh):
  rows, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  return jax.jit(_batch_sums, in_shardings=(rows, rows, rows), out_shardings=(rep, rep))


class NormalEquations:
  """Accumulates X1^T X1, X1^T Y over batches; `solve` gives the map."""

  def __init__(self, mesh: Mesh):
    self._fn = _sums_fn(mesh)
    self.xtx = self.xty = None
    self.n = 0

  def add(self, x: jax.Array, y: jax.Array, mask: jax.Array, n_valid: int):
    """Global batch-sharded x [B, m], y [B, d], mask [B] with n_valid true rows."""
    xtx, xty = jax.device_get(self._fn(x, y, mask))
    xtx, xty = np.asarray(xtx, np.float64), np.asarray(xty, np.float64)
    self.xtx = xtx if self.xtx is None else self.xtx + xtx
    self.xty = xty if self.xty is None else self.xty + xty
    self.n += int(n_valid)

  def solve(self, weight_decay: float) -> dict:
    return solve(self.xtx, self.xty, self.n, weight_decay)


def solve(xtx: np.ndarray, xty: np.ndarray, n: int, weight_decay: float) -> dict:
  """The minimiser of L above, as a map {"kernel": [m, d], "bias": [d]} (float32)."""
  d = xty.shape[1]
  lam = weight_decay * n * d / 2.0
  a = xtx + lam * np.eye(xtx.shape[0])
  try:
    beta = np.linalg.solve(a, xty)
  except np.linalg.LinAlgError:
    # Singular without regularisation (e.g. fewer rows than dims): the
    # minimum-norm least-squares solution, which is also SGD's from zero.
    beta = np.linalg.lstsq(a, xty, rcond=None)[0]
  return {"kernel": beta[:-1].astype(np.float32), "bias": beta[-1].astype(np.float32)}


def fit_arrays(x: np.ndarray, y: np.ndarray, mesh: Mesh, weight_decay: float,
               batch_size: int = 8192) -> dict:
  """Closed-form fit on in-memory host arrays (all rows on every host)."""
  eq = NormalEquations(mesh)
  rows = sharding.batch_sharding(mesh)
  n_dev = mesh.devices.size
  pi, pc = jax.process_index(), jax.process_count()
  batch_size = max(n_dev, batch_size // n_dev * n_dev)
  for start in range(0, len(x), batch_size):
    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
    n = len(xb)
    pad = batch_size - n
    mask = np.arange(batch_size) < n
    xb = np.concatenate([xb, np.zeros((pad, x.shape[1]), xb.dtype)])
    yb = np.concatenate([yb, np.zeros((pad, y.shape[1]), yb.dtype)])
    lo, hi = sharding.contiguous_rows(batch_size, pi, pc)
    g = sharding.to_global({"x": xb[lo:hi], "y": yb[lo:hi], "m": mask[lo:hi]}, rows)
    eq.add(g["x"], g["y"], g["m"], n)
  return eq.solve(weight_decay)
