"""Methods that map a vision encoder's features into CLIP's space, by name.

Each is a module with `init(key, vision_dim, clip_dim)`, `make_loss_fn(...)`
and `TERMS`; the step, loop, optimiser and checkpoints are `training/`'s.
`text_to_concept` (METHODS.md §1): one map h, MSE. `zoomshot` (§2): maps h
and g, cycle-consistency and prompt-guided distillation terms. Both train on
variance-aligned features (`linear`); Text-to-Concept also has a closed-form
solver (`ridge`), which can start Zoom-shot too.
"""

from __future__ import annotations

import jax

from zoomshot_jax.methods import linear, losses, ridge, text_to_concept, zoomshot

METHODS = {"text_to_concept": text_to_concept, "zoomshot": zoomshot}


def init_params(method: str, key: jax.Array, vision_dim: int, clip_dim: int) -> dict:
  return METHODS[method].init(key, vision_dim, clip_dim)


__all__ = ["METHODS", "init_params", "linear", "losses", "ridge", "text_to_concept",
           "zoomshot"]
