"""Checkpoint preprocessing: HF processor configs -> our spec -> tf.data geometry.

The geometry is checked against HF's own (PIL-based) image processors run on
the same image with the same config dict, not against our own arithmetic.
"""

import numpy as np
import pytest
import tensorflow as tf
import transformers
from PIL import Image

from zoomshot_jax.data.pipeline import preprocess_image
from zoomshot_jax.encoders.preprocessing import PreprocessSpec, spec_from_processor_dict

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IN_MEAN, IN_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_COMMON = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               resample=3)


def _clip(size=224, crop=224, **kw):
  return dict(image_processor_type="CLIPImageProcessor", size={"shortest_edge": size},
              crop_size={"height": crop, "width": crop}, do_center_crop=True,
              image_mean=CLIP_MEAN, image_std=CLIP_STD, **{**_COMMON, **kw})


def _vit(size=224, **kw):
  return dict(image_processor_type="ViTImageProcessor", size={"height": size, "width": size},
              image_mean=[0.5] * 3, image_std=[0.5] * 3, **{**_COMMON, **kw})


def _bit(size=256, crop=224, **kw):  # DINOv2's processor
  return dict(image_processor_type="BitImageProcessor", size={"shortest_edge": size},
              crop_size={"height": crop, "width": crop}, do_center_crop=True,
              image_mean=IN_MEAN, image_std=IN_STD, **{**_COMMON, **kw})


def _convnext(size=224, crop_pct=0.875, **kw):  # ResNet's / RegNet's processor
  return dict(image_processor_type="ConvNextImageProcessor", size={"shortest_edge": size},
              crop_pct=crop_pct, image_mean=IN_MEAN, image_std=IN_STD, **{**_COMMON, **kw})


def _beit(size=224, crop=None, **kw):
  d = dict(image_processor_type="BeitImageProcessor", size={"height": size, "width": size},
           image_mean=[0.5] * 3, image_std=[0.5] * 3, **{**_COMMON, **kw})
  if crop is None:
    d.update(do_center_crop=False, crop_size={"height": 224, "width": 224})
  else:
    d.update(do_center_crop=True, crop_size={"height": crop, "width": crop})
  return d


def _legacy_clip(size=224, crop=224):
  """An old feature-extractor config: bare ints, no image_processor_type."""
  return dict(feature_extractor_type="CLIPFeatureExtractor", size=size, crop_size=crop,
              do_center_crop=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, **_COMMON)


def _legacy_vit(size=224):
  return dict(feature_extractor_type="ViTFeatureExtractor", size=size,
              image_mean=[0.5] * 3, image_std=[0.5] * 3, **_COMMON)


# (config, expected (resize, resize_mode, crop)), worked out by hand from HF's
# processors: CLIP/Bit resize the short side then centre-crop; ViT and BEiT
# without a crop warp to the exact size; ConvNext below 384 px resizes the
# short side to size / crop_pct and crops `size`; at 384 it warps, no crop.
SPEC_CASES = {
    "clip": (_clip(), (224, "shortest_edge", 224)),
    "clip_336": (_clip(336, 336), (336, "shortest_edge", 336)),
    "vit_exact": (_vit(384), (384, "exact", 0)),
    "bit_dinov2": (_bit(), (256, "shortest_edge", 224)),
    "convnext_224": (_convnext(), (256, "shortest_edge", 224)),
    "convnext_384": (_convnext(384), (384, "exact", 0)),
    "beit_no_crop": (_beit(), (224, "exact", 0)),
    "beit_crop": (_beit(256, crop=224), (256, "exact", 224)),
    "legacy_int_clip": (_legacy_clip(), (224, "shortest_edge", 224)),
    "legacy_int_vit": (_legacy_vit(), (224, "exact", 0)),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_from_processor_dict(case):
  d, (resize, mode, crop) = SPEC_CASES[case]
  spec = spec_from_processor_dict(d, default_size=999)
  assert (spec.resize, spec.resize_mode, spec.crop) == (resize, mode, crop)
  assert spec.image_size == (crop or resize)
  assert spec.mean == pytest.approx(d["image_mean"]) and spec.std == pytest.approx(d["image_std"])
  assert spec.interpolation == "bicubic" and spec.rescale == pytest.approx(1 / 255)


def test_spec_reads_resample_rescale_and_defaults():
  spec = spec_from_processor_dict(_vit(32, resample=2, do_rescale=False), default_size=999)
  assert spec.interpolation == "bilinear" and spec.rescale == 1.0
  assert spec_from_processor_dict(_vit(32, resample=0), 999).interpolation == "nearest"
  # No size at all: the model's default size, square.
  bare = spec_from_processor_dict({"image_processor_type": "ViTImageProcessor"}, default_size=48)
  assert (bare.resize, bare.resize_mode, bare.crop) == (48, "exact", 0)
  assert bare.mean == (0.5, 0.5, 0.5) and bare.std == (0.5, 0.5, 0.5)


def test_normalize_np_matches_normalize():
  spec = spec_from_processor_dict(_clip(), 999)
  x = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
  want = (x / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
  np.testing.assert_allclose(spec.normalize_np(x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(spec.normalize(x)), want, rtol=1e-5, atol=1e-5)


def _smooth_image(h, w, seed):
  """A random image with structure at a few pixels' scale (a 7x9 random grid,
  bilinearly upsampled), so that a one-pixel shift or a wrong scale shows."""
  grid = np.random.default_rng(seed).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def _ours(img, spec):
  out = preprocess_image(tf.constant(img), spec).numpy()
  assert out.dtype == np.uint8
  return spec.normalize_np(out)


def _hf(img, d):
  cls = getattr(transformers, d.get("image_processor_type") or "CLIPImageProcessor")
  processor = cls.from_dict(d)  # the slow, PIL-based processor
  return processor(img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


# Small sizes keep the test fast; every kind still downsamples a non-square
# image and crops where its processor crops.
GEOMETRY_CASES = {
    "clip": _clip(32, 32),
    "vit_exact": _vit(32),
    "bit_dinov2": _bit(36, 32),
    "convnext_crop_pct": _convnext(32),  # resize 36, crop 32
    "beit_no_crop": _beit(32),
    "beit_crop": _beit(36, crop=32),
    "legacy_int_clip": _legacy_clip(32, 28),
}

# One grey level is 1/255/std ~ 0.015-0.017 normalised units. TF's antialiased
# bicubic and PIL's bicubic use the same kernel (a=-0.5), stretched by the
# scale, and differ by float rounding before the cast to uint8: measured mean
# |diff| 0.15-0.24 grey levels, max 1 on smooth and up to 9 on white-noise
# images. We allow a mean of 0.5 and a max of 16 grey levels. A crop off by
# one pixel, swapped height/width, or another resize target gives a mean of
# over ten grey levels on the smooth images (checked below), so it cannot pass.
MEAN_TOL, MAX_TOL = 0.5, 16.0


def _grey_levels(diff, d):
  return np.abs(diff) * 255.0 * np.asarray(d["image_std"])


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_geometry_matches_hf_image_processor(case):
  d = GEOMETRY_CASES[case]
  spec = spec_from_processor_dict(d, default_size=999)
  noise = np.random.default_rng(3).integers(0, 256, (45, 61, 3), dtype=np.uint8)
  for img in (_smooth_image(57, 83, 0), _smooth_image(83, 57, 1), noise):  # landscape, portrait
    ours, hf = _ours(img, spec), _hf(img, d)
    assert ours.shape == hf.shape == (spec.image_size, spec.image_size, 3)
    err = _grey_levels(ours - hf, d)
    assert err.mean() < MEAN_TOL and err.max() < MAX_TOL, (img.shape, err.mean(), err.max())


def test_geometry_tolerance_detects_a_one_pixel_shift():
  """The tolerance above is tight enough to see an off-by-one crop."""
  d = _clip(32, 28)
  img = _smooth_image(57, 83, 0)
  spec = spec_from_processor_dict(d, 999)
  hf = _hf(img, d)
  wider = PreprocessSpec(resize=32, resize_mode="shortest_edge", crop=30, mean=spec.mean,
                         std=spec.std)
  big = _ours(img, wider)  # 30x30 around the same centre: its [1:29] is the right crop
  assert _grey_levels(big[1:29, 1:29] - hf, d).mean() < MEAN_TOL
  for dy, dx in ((0, 1), (1, 0), (2, 1), (1, 2)):
    shifted = big[dy:dy + 28, dx:dx + 28]
    assert _grey_levels(shifted - hf, d).mean() > 4 * MEAN_TOL, (dy, dx)


def test_crop_offsets_exact():
  """No-op resize (nearest, to the image's own size): only the crop remains,
  and it must take HF's offsets (H - S) // 2, (W - S) // 2 exactly. The odd
  margins (9 and 25) tell floor from ceil or round."""
  h, w, s = 31, 47, 22
  img = np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
  top, left = (h - s) // 2, (w - s) // 2
  assert (top, left) == (4, 12)
  for d in (_clip(h, s, resample=0),  # short side 31 -> 31: the image itself
            _beit(h, crop=s, resample=0)):  # a square image, exact resize
    im = img if d["image_processor_type"] == "CLIPImageProcessor" else img[:, :h]
    spec = spec_from_processor_dict(d, 999)
    assert spec.interpolation == "nearest"
    out = preprocess_image(tf.constant(im), spec).numpy()
    np.testing.assert_array_equal(out, im[top:top + s, (im.shape[1] - s) // 2:][:, :s])
    np.testing.assert_allclose(spec.normalize_np(out), _hf(im, d), atol=1e-5)
  # Portrait: the long side is the height.
  spec = spec_from_processor_dict(_clip(h, s, resample=0), 999)
  out = preprocess_image(tf.constant(img.transpose(1, 0, 2)), spec).numpy()
  np.testing.assert_array_equal(out, img.transpose(1, 0, 2)[left:left + s, top:top + s])
