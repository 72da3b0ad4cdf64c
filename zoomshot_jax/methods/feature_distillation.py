"""Zero-shot feature distillation (METHODS.md §4) as a method: `Hyper`, `init`,
the loss terms and `make_loss_fn`.

A frozen CLIP image tower (the teacher) runs inside the step on the same
augmented batch as the student; the student (models/student.py: encoder +
linear head to d) learns to reproduce the teacher's L2-normalised features.
Terms, on normalised features ẑ_s (student), ẑ_t (teacher), t̂ (teacher text
features of each image's prompt):
  l2           mean_b ||ẑ_s − ẑ_t||₂ (un-squared; the reference's default)
  i2i          InfoNCE(ẑ_s → ẑ_t), in-batch negatives, one direction
  contrastive  ½ (InfoNCE(ẑ_s → t̂) + InfoNCE(t̂ → ẑ_s))
with logits scaled by exp(−log_temperature); total (1 − α)·distill + α·contrastive.
At α = 1 no term reads the teacher's image features, so the step does not run
its image tower (a third of the demo's student step: the stage runs in 0.61×
the time), and the teacher terms are not logged.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from zoomshot_jax import ops
from zoomshot_jax.errors import UserError

DISTILL_TERMS = ("l2", "i2i")


@dataclasses.dataclass(frozen=True)
class Hyper:
  distill: str = "l2"               # "l2" | "i2i"
  alpha: float = 0.0                # weight of the contrastive (vision-language) term
  log_temperature: float = 0.0      # τ = exp(log_temperature); logits / τ
  learn_temperature: bool = False

  @property
  def uses_teacher_images(self) -> bool:
    """Whether a term reads the teacher's image features (all but α = 1)."""
    return self.alpha < 1.0


def check(hyper: Hyper) -> None:
  if hyper.distill not in DISTILL_TERMS:
    raise UserError(f"config.distill.loss={hyper.distill!r}: expected one of "
                    f"{list(DISTILL_TERMS)}.")
  if not 0.0 <= hyper.alpha <= 1.0:
    raise UserError(f"config.distill.alpha={hyper.alpha}: expected a weight in [0, 1] "
                    "(0 = feature distillation only, 1 = contrastive only).")


def init(student_params: dict, hyper: Hyper) -> dict:
  """The trained parameters: the student's (encoder + head), plus the
  temperature when it is learned."""
  params = dict(student_params)
  if hyper.learn_temperature:
    params["log_temperature"] = jnp.asarray(hyper.log_temperature, jnp.float32)
  return params


def _info_nce(logits):
  labels = jnp.arange(logits.shape[0])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def terms(zs, zt, text, log_temperature) -> dict:
  """Every term on normalised features; `zt` [B, d] or None (contrastive only),
  `text` [B, d] or None (no contrastive)."""
  scale = jnp.exp(-log_temperature)
  out = {}
  if zt is not None:
    out = {"l2": jnp.linalg.norm(zs - zt, axis=-1).mean(),
           "i2i": _info_nce(scale * zs @ zt.T),
           "cosine": (zs * zt).sum(-1).mean()}         # logged, never a loss
  if text is not None:
    logits = scale * zs @ text.T
    out["contrastive"] = 0.5 * (_info_nce(logits) + _info_nce(logits.T))
  return out


def total(t: dict, hyper: Hyper):
  if not hyper.uses_teacher_images:
    return t["contrastive"]
  if hyper.alpha == 0.0:
    return t[hyper.distill]
  return (1.0 - hyper.alpha) * t[hyper.distill] + hyper.alpha * t["contrastive"]


def make_loss_fn(hyper: Hyper, student_embed, teacher_features, student_key: str,
                 teacher_key: str, text_key: str = "label"):
  """The shared step's loss.

  student_embed(params, model_state, images) -> ([B, d], model_state): the
    student in train mode; teacher_features(teacher_params, images) -> [B, d].
  batch: {student_key: uint8 images, teacher_key: uint8 images (the same key
    when both views agree), text_key: int [B]}; frozen: {"teacher": params,
    "text": [T, d] normalised text features (contrastive only)}, row
    batch[text_key] of it being each image's text: its class prompt
    (text_key "label") or its own caption (a caption id).
  """
  def loss_fn(params, model_state, batch, frozen, rng):
    del rng
    s, model_state = student_embed(params, model_state, batch[student_key])
    zs = ops.l2_normalize(s)
    # At alpha = 1 the teacher's features would only be logged: not worth its
    # forward pass in every step.
    zt = (ops.l2_normalize(teacher_features(frozen["teacher"], batch[teacher_key]))
          if hyper.uses_teacher_images else None)
    text = frozen["text"][batch[text_key]] if hyper.alpha > 0 else None
    log_t = params.get("log_temperature", hyper.log_temperature)
    t = terms(zs, zt, text, log_t)
    return total(t, hyper), (t, model_state)

  return loss_fn
