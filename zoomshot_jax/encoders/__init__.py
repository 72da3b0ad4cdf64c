"""Registry of frozen encoders by name.

`clip` gives image and text towers (`load_clip`); the vision encoders
`vit` (DeiT too), `dinov2`, `beit`, `resnet`, `regnet` and `clip` (its image
tower) are picked by name with `load_vision_encoder`.
"""

from zoomshot_jax.encoders.clip import CLIP, load_clip
from zoomshot_jax.encoders.preprocessing import PreprocessSpec
from zoomshot_jax.encoders.vision import ARCHS, VisionEncoder
from zoomshot_jax.encoders.vision import load_vision_encoder as _load_hf_vision
from zoomshot_jax.errors import UserError

VISION_ENCODERS = ("clip",) + tuple(sorted(ARCHS))


def load_vision_encoder(name: str, checkpoint: str, pooling: str = "default",
                        dtype: str = "float32", random_init: bool = False,
                        seed: int = 0) -> VisionEncoder:
  """A vision encoder by registry name; see `VISION_ENCODERS`."""
  if name == "clip":
    if pooling not in ("default", "pooler"):
      raise UserError(f"pooling={pooling!r}: the clip image tower has only "
                      "'pooler' (its projected embedding).")
    return load_clip(checkpoint, dtype, random_init, seed).as_vision_encoder()
  if name not in ARCHS:
    raise UserError(f"unknown vision encoder {name!r}; known: {list(VISION_ENCODERS)}.")
  return _load_hf_vision(name, checkpoint, pooling, dtype, random_init, seed)


__all__ = ["CLIP", "PreprocessSpec", "VisionEncoder", "VISION_ENCODERS",
           "load_clip", "load_vision_encoder"]
