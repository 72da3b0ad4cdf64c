"""Text-to-Concept (METHODS.md §1) as a method: one map h, MSE to CLIP's features.

Its exact closed form is `ridge`; this is the SGD path, on the shared step.
"""

from __future__ import annotations

import jax

from zoomshot_jax.methods import linear, losses

TERMS = ("mse",)


def init(key: jax.Array, vision_dim: int, clip_dim: int) -> dict:
  return {"h": linear.init(key, vision_dim, clip_dim)}


def make_loss_fn(features, weights=(("mse", 1.0),)):
  """`features` as `zoomshot.aligned_features`."""
  weights = dict(weights)

  def loss_fn(params, model_state, batch, frozen, rng):
    del rng
    v, c = features(frozen, batch)
    terms = losses.text_to_concept_terms(params, v, c)
    return losses.weighted_total(terms, weights), (terms, model_state)

  return loss_fn
