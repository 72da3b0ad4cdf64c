"""A small API for notebooks: embeddings and zero-shot labels in three lines.

  from zoomshot_jax import api
  clip = api.load("openai/clip-vit-base-patch32")        # hub id or local dir
  img = clip.embed_images(["cat.jpg", pil_image, uint8_array])   # [n, d], unit norm
  txt = clip.embed_texts(["a photo of a cat", "a photo of a dog"])
  probs = clip.classify(["cat.jpg"], ["cat", "dog"])               # [n, 2]

Any vision encoder + an exported Zoom-shot / Text-to-Concept mapping is a
zero-shot classifier in the same three lines:

  dino = api.load_mapped("workdir/export/mapping.npz")   # encoders named inside
  probs = dino.classify(["cat.jpg"], ["cat", "dog"])

and so is a distilled student, with its teacher's text tower:

  small = api.load_student("workdir/export/student")     # teacher named inside
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import numpy as np

from zoomshot_jax import data, encoders, io_utils
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import artifact, linear
from zoomshot_jax.training import features
from zoomshot_jax.evaluation.classifier import build_classifier, encode_texts
from zoomshot_jax.evaluation.classnames import Prompts
from zoomshot_jax.evaluation.zeroshot import zero_shot_logits
from zoomshot_jax.ops import l2_normalize


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
  """A loaded CLIP with batched, jitted embedding and zero-shot classification.

  Images go through `feature_fn(variables, uint8 images)` into CLIP's space:
  CLIP's image tower by default, or a vision encoder followed by a map.
  """

  def __init__(self, clip: encoders.CLIP, batch_size: int = 32, feature_fn=None,
               variables=None, preprocess_spec=None):
    self.clip = clip
    self.batch_size = batch_size
    feature_fn = feature_fn or clip.image_features
    self._variables = clip.params if variables is None else variables
    self._spec = preprocess_spec or clip.preprocess
    self._image_fn = jax.jit(lambda p, x: l2_normalize(feature_fn(p, x)))

  def preprocess(self, images: Sequence) -> np.ndarray:
    """The image encoder's own resize/crop: uint8 [n, S, S, 3]."""
    return np.stack([data.preprocess_image(_as_uint8(im), self._spec).numpy()
                     for im in images])

  def embed_images(self, images: Sequence) -> np.ndarray:
    """Unit-norm image embeddings [n, d] float32."""
    x = self.preprocess(images)
    n, b = len(x), self.batch_size
    pad = (-n) % b  # fixed batch shape: one compilation for any n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], np.uint8)])
    out = [np.asarray(self._image_fn(self._variables, x[i:i + b]))
           for i in range(0, n + pad, b)]
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


def load_mapped(path: str, vision_checkpoint: str | None = None,
                clip_checkpoint: str | None = None, dtype: str = "float32",
                batch_size: int = 32, check_weights: bool = True) -> Embedder:
  """A zero-shot classifier from a vision encoder and an exported mapping.

  Args:
    path: <workdir>/export/mapping.npz written by the zoomshot program.
    vision_checkpoint / clip_checkpoint: where to load the encoders from
      (default: the ids recorded in the file), e.g. a local copy.
    check_weights: refuse encoders whose weights differ from the ones the map
      was trained on (float32 only: other dtypes change the fingerprint).
  """
  maps, meta = artifact.load(path)
  v = meta["vision"]
  vision = encoders.load_vision_encoder(v["name"], vision_checkpoint or v["checkpoint"],
                                        v["pooling"], dtype)
  clip = encoders.load_clip(clip_checkpoint or meta["clip"]["checkpoint"], dtype)
  if check_weights and dtype == "float32":
    found = features.encoder_identity(vision, clip)
    for side in ("vision", "clip"):
      if found[side]["fingerprint"] != meta[side]["fingerprint"]:
        raise UserError(f"{path}: the {side} weights loaded from "
                        f"{found[side]['checkpoint']!r} are not the ones the map was "
                        "trained on; pass the right checkpoint, or check_weights=False.")
  h = jax.tree.map(lambda x: np.asarray(x, np.float32), maps["h"])

  def mapped(variables, images):
    return linear.apply(variables["h"], vision.image_features(variables["vision"], images))

  return Embedder(clip, batch_size, mapped, {"vision": vision.variables, "h": h},
                  vision.preprocess)


def load_student(path: str, clip_checkpoint: str | None = None, dtype: str = "float32",
                 batch_size: int = 32) -> Embedder:
  """A zero-shot classifier from a distilled student and its teacher's text tower.

  Args:
    path: <workdir>/export/student written by the distill program.
    clip_checkpoint: the teacher CLIP (default: the one recorded in student.json).
  """
  student = encoders.load_vision_encoder("student", path, dtype=dtype)
  meta = io_utils.read_json(os.path.join(path, "student.json"))
  clip = encoders.load_clip(clip_checkpoint or meta["teacher"], dtype)
  if clip.dim != student.dim:
    raise UserError(f"{path}: the student maps into a {student.dim}-d space, but the CLIP "
                    f"{clip.checkpoint!r} has d={clip.dim}; pass its teacher.")
  return Embedder(clip, batch_size, student.image_features, student.variables,
                  student.preprocess)
