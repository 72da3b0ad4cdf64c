"""Registry of frozen encoders by name.

`clip` gives image and text towers (`load_clip`); the vision encoders
`vit` (DeiT too), `dinov2`, `beit`, `resnet`, `regnet`, `clip` (its image
tower) and `student` (a distilled student's export: an image tower in CLIP
space) are picked by name with `load_vision_encoder`; the text encoders
`bert`, `roberta`, `xlm-roberta`, `distilbert` and `clip` (its text tower)
with `load_text_encoder`.
"""

from zoomshot_jax.encoders.clip import CLIP, load_clip
from zoomshot_jax.encoders.preprocessing import PreprocessSpec
from zoomshot_jax.encoders.text import ARCHS as TEXT_ARCHS
from zoomshot_jax.encoders.text import DEFAULT_MAX_LENGTH, TextEncoder
from zoomshot_jax.encoders.text import load_text_encoder as _load_hf_text
from zoomshot_jax.encoders.vision import ARCHS, VisionEncoder
from zoomshot_jax.encoders.vision import load_vision_encoder as _load_hf_vision
from zoomshot_jax.errors import UserError

VISION_ENCODERS = ("clip",) + tuple(sorted(ARCHS)) + ("student",)
TEXT_ENCODERS = ("clip",) + tuple(sorted(TEXT_ARCHS))


def load_vision_encoder(name: str, checkpoint: str, pooling: str = "default",
                        dtype: str = "float32", random_init: bool = False,
                        seed: int = 0) -> VisionEncoder:
  """A vision encoder by registry name; see `VISION_ENCODERS`."""
  if name == "clip":
    if pooling not in ("default", "pooler"):
      raise UserError(f"pooling={pooling!r}: the clip image tower has only "
                      "'pooler' (its projected embedding).")
    return load_clip(checkpoint, dtype, random_init, seed).as_vision_encoder()
  if name == "student":
    from zoomshot_jax.encoders.student import load_student  # pylint: disable=g-import-not-at-top
    return load_student(checkpoint, dtype)
  if name not in ARCHS:
    raise UserError(f"unknown vision encoder {name!r}; known: {list(VISION_ENCODERS)}.")
  return _load_hf_vision(name, checkpoint, pooling, dtype, random_init, seed)


def load_text_encoder(name: str, checkpoint: str, pooling: str = "default",
                      dtype: str = "float32", random_init: bool = False, seed: int = 0,
                      max_length: int = DEFAULT_MAX_LENGTH) -> TextEncoder:
  """A text encoder by registry name; see `TEXT_ENCODERS`.

  `clip` is CLIP's text tower T(s) (its own tokenizer and 77-token limit;
  `max_length` does not apply), the others BERT-family sentence encoders.
  """
  if name == "clip":
    if pooling not in ("default", "pooler"):
      raise UserError(f"pooling={pooling!r}: the clip text tower has only "
                      "'pooler' (its projected EOS embedding).")
    clip = load_clip(checkpoint, dtype, random_init, seed)
    return TextEncoder(name="clip", checkpoint=checkpoint, pooling="pooler", dim=clip.dim,
                       params=clip.params, tokenizer=clip.tokenizer,
                       max_length=clip.max_length, forward=clip.text_features, dtype=dtype)
  if name not in TEXT_ARCHS:
    raise UserError(f"unknown text encoder {name!r}; known: {list(TEXT_ENCODERS)}.")
  return _load_hf_text(name, checkpoint, pooling, dtype, random_init, seed, max_length)


__all__ = ["CLIP", "PreprocessSpec", "TextEncoder", "TEXT_ENCODERS", "VisionEncoder",
           "VISION_ENCODERS", "load_clip", "load_text_encoder", "load_vision_encoder"]
