"""Zoom-shot (METHODS.md §2) as a method: `init`, `make_loss_fn`, and its features.

Maps h: vision -> CLIP and g: CLIP -> vision, trained on variance-aligned
features with the cycle and prompt-guided distillation terms of `losses`.
The shared step (`training.step`) calls the loss as
`loss_fn(params, model_state, batch, frozen, rng)`; `frozen` holds the prompt
embeddings ("text" [T, d], placed at `class_norm`) and the class vectors
("classes" [K, d]), plus the frozen encoders in online mode.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from zoomshot_jax.methods import linear, losses

TERMS = losses.ZOOMSHOT_TERMS


@dataclasses.dataclass(frozen=True)
class Hyper:
  """Everything about the loss that is not an array (static under jit)."""

  weights: tuple               # ((term, weight), ...)
  paired: bool = True
  pgkd_mode: str = "kl"
  tau: float = 1.0
  logit_scale: float = 100.0
  class_norm: float = 1.0      # RMS norm of aligned CLIP image features
  text_batch: int = 256        # prompt embeddings per step for the text cycle


def init(key: jax.Array, vision_dim: int, clip_dim: int) -> dict:
  kh, kg = jax.random.split(key)
  return {"h": linear.init(kh, vision_dim, clip_dim), "g": linear.init(kg, clip_dim, vision_dim)}


def aligned_features(vision_scale: float, clip_scale: float, vision=None, clip=None):
  """(frozen, batch) -> aligned (v [B, m], c [B, d]).

  With no encoders, the batch holds cached features ("vision", "clip"); with
  them, uint8 images of both views, encoded inside the step by the frozen
  encoders (weights in frozen["vision"], frozen["clip"]).
  """
  def features(frozen, batch):
    if vision is None:
      v, c = batch["vision"].astype(jnp.float32), batch["clip"].astype(jnp.float32)
    else:
      v = vision.image_features(frozen["vision"], batch["vision"])
      c = clip.image_features(frozen["clip"], batch["clip"])
    return v * vision_scale, c * clip_scale
  return features


def make_loss_fn(hyper: Hyper, features):
  weights = dict(hyper.weights)

  def loss_fn(params, model_state, batch, frozen, rng):
    v, c = features(frozen, batch)
    text = frozen["text"]
    if hyper.text_batch < text.shape[0]:
      # A fresh sample of prompts each step; rng is a function of the step.
      text = text[jax.random.randint(rng, (hyper.text_batch,), 0, text.shape[0])]
    terms = losses.zoomshot_terms(params, v, c, text, frozen["classes"], hyper.logit_scale,
                                  hyper.class_norm, hyper.tau, hyper.pgkd_mode, hyper.paired)
    return losses.weighted_total(terms, weights), (terms, model_state)

  return loss_fn
