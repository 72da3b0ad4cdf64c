"""A small API for notebooks: embeddings and zero-shot labels in three lines.

  from zoomshot_jax import api
  clip = api.load("openai/clip-vit-base-patch32")        # hub id or local dir
  img = clip.embed_images(["cat.jpg", pil_image, uint8_array])   # [n, d], unit norm
  txt = clip.embed_texts(["a photo of a cat", "a photo of a dog"])
  probs = clip.classify(["cat.jpg"], ["cat", "dog"])               # [n, 2]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from zoomshot_jax import data, encoders
from zoomshot_jax.evaluation.classifier import build_classifier, encode_texts, l2_normalize
from zoomshot_jax.evaluation.classnames import Prompts
from zoomshot_jax.evaluation.zeroshot import zero_shot_logits


def _as_uint8(image) -> np.ndarray:
  """A path, PIL image or [H, W, C] array -> uint8 [H, W, 3]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if isinstance(image, str):
    with Image.open(image) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  if isinstance(image, Image.Image):
    return np.asarray(image.convert("RGB"), np.uint8)
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  if arr.dtype != np.uint8:
    raise TypeError(f"image arrays must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
  return arr[..., :3]


class Embedder:
  """A loaded CLIP with batched, jitted embedding and zero-shot classification."""

  def __init__(self, clip: encoders.CLIP, batch_size: int = 32):
    self.clip = clip
    self.batch_size = batch_size
    self._image_fn = jax.jit(lambda p, x: l2_normalize(clip.image_features(p, x)))

  def preprocess(self, images: Sequence) -> np.ndarray:
    """The checkpoint's own resize/crop: uint8 [n, S, S, 3]."""
    return np.stack([data.preprocess_image(_as_uint8(im), self.clip.preprocess).numpy()
                     for im in images])

  def embed_images(self, images: Sequence) -> np.ndarray:
    """Unit-norm image embeddings [n, d] float32."""
    x = self.preprocess(images)
    n, b = len(x), self.batch_size
    pad = (-n) % b  # fixed batch shape: one compilation for any n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.uint8)])
    out = [np.asarray(self._image_fn(self.clip.params, x[i:i + b])) for i in range(0, n + pad, b)]
    return np.concatenate(out)[:n]

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm text embeddings [n, d] float32."""
    return encode_texts(self.clip, list(texts), batch_size=self.batch_size)

  @functools.lru_cache(maxsize=16)
  def _classifier(self, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
    return build_classifier(self.clip, Prompts(labels, templates, "api"), self.batch_size)

  def classify(self, images: Sequence, labels: Sequence[str],
               templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
    """Zero-shot probabilities [n, len(labels)] over free-text labels."""
    w = self._classifier(tuple(labels), tuple(templates))
    logits = zero_shot_logits(self.embed_images(images), w, self.clip.logit_scale)
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def load(checkpoint: str, dtype: str = "float32", batch_size: int = 32) -> Embedder:
  """Loads a CLIP from a hub id or a directory written by save_pretrained."""
  return Embedder(encoders.load_clip(checkpoint, dtype), batch_size)
