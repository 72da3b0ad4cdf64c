"""Methods that map a vision encoder's features into CLIP's space, by name.

`text_to_concept` (METHODS.md §1): one map h, MSE. `zoomshot` (§2): maps h
and g, cycle-consistency and prompt-guided distillation terms. Both train on
variance-aligned features (`linear`); Text-to-Concept also has a closed-form
solver (`ridge`), which can start Zoom-shot too.
"""

from __future__ import annotations

import dataclasses

import jax

from zoomshot_jax.methods import linear, losses, ridge


@dataclasses.dataclass(frozen=True)
class Method:
  maps: tuple[str, ...]     # "h": vision -> CLIP; "g": CLIP -> vision
  terms: tuple[str, ...]    # loss terms it can weight


METHODS = {
    "text_to_concept": Method(maps=("h",), terms=("mse",)),
    "zoomshot": Method(maps=("h", "g"), terms=losses.ZOOMSHOT_TERMS),
}


def init_params(method: str, key: jax.Array, vision_dim: int, clip_dim: int) -> dict:
  kh, kg = jax.random.split(key)
  params = {"h": linear.init(kh, vision_dim, clip_dim)}
  if "g" in METHODS[method].maps:
    params["g"] = linear.init(kg, clip_dim, vision_dim)
  return params


__all__ = ["METHODS", "Method", "init_params", "linear", "losses", "ridge"]
