"""Array functions shared by encoders, methods and evaluators (pure, jit-able)."""

from __future__ import annotations

import jax.numpy as jnp


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, eps) along `axis` (eps keeps zero rows zero, not NaN)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)
