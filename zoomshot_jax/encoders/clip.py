"""CLIP from HF Flax: image and text towers, projections and logit scale.

`image_features(params, images)` and `text_features(params, input_ids,
attention_mask)` are pure and jit-able and return the projected (not yet
normalised) embeddings I(x), T(s) of METHODS.md, float32 [batch, d].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.preprocessing import PreprocessSpec, load_spec
from zoomshot_jax.encoders.vision import VisionEncoder

# CLIP's context length; also the position-embedding table size of every
# released checkpoint.
MAX_TEXT_LENGTH = 77


def _image_forward(module, params, x):
  return module.apply(
      {"params": params}, x,
      method=lambda m, px: m.visual_projection(m.vision_model(pixel_values=px, deterministic=True)[1]))


def _text_forward(module, params, input_ids, attention_mask):
  position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)

  def fn(m, ids, mask, pos):
    # The text tower pools the EOS token (the highest id) under a causal mask,
    # so trailing padding does not change the result.
    pooled = m.text_model(input_ids=ids, attention_mask=mask, position_ids=pos,
                          deterministic=True)[1]
    return m.text_projection(pooled)

  return module.apply({"params": params}, input_ids, attention_mask, position_ids, method=fn)


@dataclasses.dataclass
class CLIP:
  """A frozen CLIP: pure feature functions, parameters, tokenizer, preprocessing."""

  checkpoint: str
  params: Any
  dim: int
  preprocess: PreprocessSpec
  tokenizer: Any
  max_length: int
  module: Any
  dtype: str = "float32"

  @property
  def logit_scale(self) -> float:
    """s = exp(logit_scale) of the checkpoint (100 for OpenAI CLIP)."""
    return float(math.exp(float(jax.device_get(self.params["logit_scale"]))))

  def image_features(self, params, images):
    """[batch, H, W, 3] pixels in [0, 255] -> [batch, d] float32, I(x)."""
    x = self.preprocess.normalize(images)
    return _image_forward(self.module, params, x).astype(jnp.float32)

  def text_features(self, params, input_ids, attention_mask):
    """[batch, L] int32 token ids and mask -> [batch, d] float32, T(s)."""
    return _text_forward(self.module, params, input_ids, attention_mask).astype(jnp.float32)

  def tokenize(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Tokenizes with the checkpoint's tokenizer, truncating to 77 tokens.

    Pads to the longest text (or `pad_to`), so one shape serves every batch of
    a prompt set: {"input_ids": [n, L] int32, "attention_mask": [n, L] int32}.
    """
    enc = self.tokenizer(list(texts), padding="max_length" if pad_to else "longest",
                         max_length=pad_to or self.max_length, truncation=True,
                         return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32),
            "attention_mask": enc["attention_mask"].astype(np.int32)}

  def as_vision_encoder(self) -> VisionEncoder:
    """CLIP's image tower as a `VisionEncoder` (features I(x), dim d)."""
    module = self.module
    return VisionEncoder(
        name="clip", checkpoint=self.checkpoint, pooling="pooler", dim=self.dim,
        preprocess=self.preprocess, variables=self.params,
        forward=lambda params, x: _image_forward(module, params, x))


def load_clip(checkpoint: str, dtype: str = "float32", random_init: bool = False,
              seed: int = 0) -> CLIP:
  """Loads CLIP (weights, tokenizer, preprocessing) from a hub id or directory.

  Args:
    checkpoint: hub id (e.g. "openai/clip-vit-base-patch32") or a directory
      written by `save_pretrained` holding the tokenizer files too.
    dtype: "float32" or "bfloat16" (parameters and compute).
    random_init: random weights of the checkpoint's config (tests, benchmarks).
  """
  import transformers  # pylint: disable=g-import-not-at-top

  jdtype = params_lib.compute_dtype(dtype)
  model, params = params_lib.load_model(transformers.FlaxCLIPModel, checkpoint, ("clip",),
                                        jdtype, "clip checkpoint", random_init, seed)
  # The logit scale stays float32 (taken before the cast, which would round
  # it): exp() of a bf16 value is visibly off.
  logit_scale = jnp.asarray(params["logit_scale"], jnp.float32)
  params = params_lib.cast_floating(params, jdtype)
  params["logit_scale"] = logit_scale
  tokenizer = params_lib.load_tokenizer(checkpoint, "clip checkpoint")
  config = model.config
  max_length = min(MAX_TEXT_LENGTH, int(config.text_config.max_position_embeddings))
  spec = load_spec(checkpoint, default_size=int(config.vision_config.image_size))
  return CLIP(checkpoint=checkpoint, params=params, dim=int(config.projection_dim),
              preprocess=spec, tokenizer=tokenizer, max_length=max_length,
              module=model.module, dtype=dtype)
