"""Loss terms of Text-to-Concept and Zoom-shot (METHODS.md §1-2), pure functions.

Notation: v [B, m] aligned vision features, c [B, d] aligned CLIP image
features of the same images (when paired), t [T, d] CLIP text embeddings of
prompts, W [K, d] the zero-shot classifier (unit rows), s CLIP's logit scale,
h: R^m -> R^d and g: R^d -> R^m linear maps (`linear.apply`).

Squared errors are averaged over rows *and* dimensions (PyTorch's MSELoss, as
in the Text-to-Concept reference), so that with aligned features (variance
4.5 per entry) every term is O(1) and the default weights of 1 are balanced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zoomshot_jax.ops import l2_normalize
from zoomshot_jax.methods import linear

# Terms that compare the two encoders on the same image: meaningless when the
# encoders see independent shuffles (paired=false, METHODS.md §2).
PAIRED_TERMS = ("mse", "pgkd_clip", "pgkd_vision")
ZOOMSHOT_TERMS = ("mse", "cycle_image", "cycle_text", "pgkd_clip", "pgkd_vision")
_HIGHEST = jax.lax.Precision.HIGHEST


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """mean_{b,j} (pred - target)^2 for [B, n] arrays -> scalar."""
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def cosine_logits(z: jax.Array, classes: jax.Array, scale: float) -> jax.Array:
  """s * norm(z) classes^T: [B, n], [K, n] (unit rows) -> [B, K]."""
  return scale * jnp.dot(l2_normalize(z), classes.T, precision=_HIGHEST)


def distill(teacher_logits: jax.Array, student_logits: jax.Array, tau: float,
            mode: str = "kl") -> jax.Array:
  """Prompt-guided distillation, [B, K] logits -> scalar.

  kl:      tau^2 * mean_b KL(softmax(t/tau) || softmax(s/tau))  (Hinton et al.)
  hard_ce: tau^2 * mean_b -log softmax(s/tau)[argmax t]  (the paper's ablation)
  The tau^2 keeps gradient magnitudes independent of tau.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  log_q = jax.nn.log_softmax(student_logits / tau, axis=-1)
  if mode == "kl":
    log_p = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
    per_row = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  elif mode == "hard_ce":
    target = jnp.argmax(teacher_logits, axis=-1)
    per_row = -jnp.take_along_axis(log_q, target[:, None], axis=-1)[:, 0]
  else:
    raise ValueError(f"pgkd_mode={mode!r}: expected 'kl' or 'hard_ce'.")
  return tau * tau * jnp.mean(per_row)


def text_to_concept_terms(params: dict, v: jax.Array, c: jax.Array) -> dict:
  """{"mse": ||h(v) - c||^2} (METHODS.md §1): one map, one direction."""
  return {"mse": mse(linear.apply(params["h"], v), c)}


def zoomshot_terms(params: dict, v: jax.Array, c: jax.Array, t: jax.Array,
                   classes: jax.Array, logit_scale: float, class_norm: float,
                   tau: float, pgkd_mode: str, paired: bool) -> dict:
  """Every Zoom-shot term (METHODS.md §2), unweighted scalars.

  Args:
    params: {"h": map m->d, "g": map d->m}.
    v, c: [B, m], [B, d] aligned features; rows of the same image if `paired`.
    t: [T, d] prompt embeddings placed at `class_norm` (see below).
    classes: [K, d] unit class vectors W.
    class_norm: the RMS norm of aligned CLIP image features. W's unit rows and
      the text embeddings live on another scale than the features g was fitted
      on; g is affine, so they are scaled to that norm before g sees them (ours).
  """
  h, g = params["h"], params["g"]
  hv, gc = linear.apply(h, v), linear.apply(g, c)
  terms = {
      "cycle_image": mse(linear.apply(g, hv), v) + mse(linear.apply(h, gc), c),
      "cycle_text": mse(linear.apply(h, linear.apply(g, t)), t),
  }
  if paired:
    terms["mse"] = mse(hv, c) + mse(gc, v)
    teacher = cosine_logits(c, classes, logit_scale)
    terms["pgkd_clip"] = distill(teacher, cosine_logits(hv, classes, logit_scale), tau,
                                 pgkd_mode)
    classes_v = l2_normalize(linear.apply(g, class_norm * classes))   # W_v = norm(g(W))
    terms["pgkd_vision"] = distill(teacher, cosine_logits(v, classes_v, logit_scale), tau,
                                   pgkd_mode)
  return terms


def weighted_total(terms: dict, weights: dict) -> jax.Array:
  """sum_k weights[k] * terms[k], over the terms present with non-zero weight."""
  return sum(weights[k] * v for k, v in terms.items() if weights.get(k, 0.0))
