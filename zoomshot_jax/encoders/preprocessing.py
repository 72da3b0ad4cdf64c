"""An encoder's own image preprocessing, read from its checkpoint.

HF checkpoints carry a `preprocessor_config.json` (CLIPImageProcessor,
ViTImageProcessor, BitImageProcessor for DINOv2, ConvNextImageProcessor for
ResNet/RegNet, BeitImageProcessor). We read the few numbers that define the
geometry and normalisation and apply them in tf.data (resize, crop; uint8
out) and on device (scale and normalise), so host-to-device traffic stays uint8.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
from absl import logging

# PIL resample codes as stored in HF configs -> tf.image.resize methods.
_RESAMPLE = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bicubic"}


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
  """Resize -> centre crop -> rescale -> normalise, HF semantics.

  resize_mode: "shortest_edge" (short side to `resize`, aspect kept) or
    "exact" (to `resize` x `resize`).
  crop: side of the square centre crop, or 0 for none (then `resize` must be
    "exact" so that batches have one shape).
  """

  resize: int = 224
  resize_mode: str = "shortest_edge"
  crop: int = 224
  mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
  std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
  interpolation: str = "bicubic"
  rescale: float = 1 / 255

  @property
  def image_size(self) -> int:
    """Side of the square image the encoder receives."""
    return self.crop or self.resize

  def normalize(self, images_uint8):
    """[batch, H, W, 3] uint8 -> float32 normalised, on device (jit-able)."""
    x = images_uint8.astype(jnp.float32) * self.rescale
    return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

  def normalize_np(self, images_uint8: np.ndarray) -> np.ndarray:
    x = images_uint8.astype(np.float32) * self.rescale
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def _size_of(value, key_order=("shortest_edge", "height")):
  if isinstance(value, dict):
    for k in key_order:
      if k in value:
        return int(value[k]), k
    raise ValueError(f"unrecognised size {value}")
  return int(value), None


def processor_dict(spec: PreprocessSpec) -> dict:
  """A `preprocessor_config.json` dict that `spec_from_processor_dict` reads
  back as `spec` (a trained student is written with its teacher's geometry
  and normalisation)."""
  size = ({"shortest_edge": spec.resize} if spec.resize_mode == "shortest_edge"
          else {"height": spec.resize, "width": spec.resize})
  resample = {v: k for k, v in _RESAMPLE.items() if k != 5}[spec.interpolation]
  d = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": size,
       "resample": resample, "do_rescale": True, "rescale_factor": spec.rescale,
       "do_normalize": True, "image_mean": list(spec.mean), "image_std": list(spec.std),
       "do_center_crop": bool(spec.crop)}
  if spec.crop:
    d["crop_size"] = {"height": spec.crop, "width": spec.crop}
  return d


def spec_from_processor_dict(d: dict, default_size: int) -> PreprocessSpec:
  """Builds a spec from a `preprocessor_config.json` dict."""
  mean = tuple(float(v) for v in d.get("image_mean", (0.5, 0.5, 0.5)))
  std = tuple(float(v) for v in d.get("image_std", (0.5, 0.5, 0.5)))
  interpolation = _RESAMPLE.get(int(d.get("resample", 3)), "bicubic")
  rescale = float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 1.0
  size, size_key = _size_of(d.get("size", default_size))
  kind = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "")
  if size_key is None and any(k in kind for k in ("CLIP", "ConvNext", "Bit")):
    # These processors read a bare int size as the short side (HF's
    # get_size_dict(default_to_square=False)); the others as a square.
    size_key = "shortest_edge"
  do_crop = bool(d.get("do_center_crop", "crop_size" in d))
  crop = _size_of(d.get("crop_size", size))[0] if do_crop else 0
  mode = "shortest_edge" if size_key == "shortest_edge" else "exact"
  if "crop_pct" in d and size_key == "shortest_edge" and d.get("crop_pct"):
    # ConvNextImageProcessor: below 384px, resize the short side to
    # size / crop_pct and centre-crop `size` (e.g. 256 -> 224).
    if size < 384:
      crop, size = size, int(size / float(d["crop_pct"]))
  if not crop and mode != "exact":
    mode = "exact"  # no crop: only an exact resize gives one batch shape
  return PreprocessSpec(
      resize=size, resize_mode=mode, crop=crop, mean=mean, std=std,
      interpolation=interpolation, rescale=rescale,
  )


def load_spec(name_or_path: str, default_size: int) -> PreprocessSpec:
  """Reads the checkpoint's preprocessor config; falls back to defaults."""
  d = None
  local = os.path.join(name_or_path, "preprocessor_config.json")
  if os.path.isdir(name_or_path):
    if os.path.exists(local):
      with open(local) as f:
        d = json.load(f)
  else:
    from transformers.utils import cached_file  # pylint: disable=g-import-not-at-top

    try:
      path = cached_file(name_or_path, "preprocessor_config.json",
                         _raise_exceptions_for_missing_entries=False)
      if path:
        with open(path) as f:
          d = json.load(f)
    except OSError:
      d = None
  if d is None:
    logging.warning(
        "%s has no preprocessor_config.json: using resize %d, no crop, "
        "mean/std 0.5.", name_or_path, default_size)
    return PreprocessSpec(resize=default_size, resize_mode="exact", crop=0,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
  return spec_from_processor_dict(d, default_size)
