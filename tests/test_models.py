"""models/: the tiny CLIP's ViT-style init and its label-preserving augmentation."""

import numpy as np
import pytest

from zoomshot_jax.errors import UserError
from zoomshot_jax.models import recipe, tiny_clip


def _params():
  rng = np.random.default_rng(0)
  return {"vision_model": {
      "embeddings": {"patch_embedding": {"kernel": rng.normal(0, 0.02, (8, 8, 3, 96))},
                     "position_embedding": {"embedding": rng.normal(0, 0.02, (37, 96))}},
      "encoder": {"layers": {"0": {"mlp": {"fc1": {"kernel": rng.normal(0, 0.02, (96, 384)),
                                                   "bias": np.zeros(384)}}}}},
      "post_layernorm": {"scale": np.ones(96)}}}


def test_vit_init_uses_xavier_and_lecun_scales_and_keeps_the_rest():
  before = _params()
  after = recipe.vit_init(before, seed=0)
  fc1 = after["vision_model"]["encoder"]["layers"]["0"]["mlp"]["fc1"]
  # xavier uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), std a / sqrt(3).
  a = np.sqrt(6 / (96 + 384))
  assert np.abs(fc1["kernel"]).max() <= a and abs(fc1["kernel"].std() - a / np.sqrt(3)) < 0.01 * a
  patch = after["vision_model"]["embeddings"]["patch_embedding"]["kernel"]
  assert abs(patch.std() - np.sqrt(1 / (8 * 8 * 3))) < 0.05 / np.sqrt(192)   # LeCun normal
  for path in (("embeddings", "position_embedding", "embedding"), ("post_layernorm", "scale")):
    x, y = before["vision_model"], after["vision_model"]
    for p in path:
      x, y = x[p], y[p]
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(fc1["bias"], 0)
  again = recipe.vit_init(_params(), seed=0)["vision_model"]["encoder"]["layers"]["0"]
  np.testing.assert_array_equal(again["mlp"]["fc1"]["kernel"], fc1["kernel"])   # seeded


def test_dihedral_gives_each_of_the_eight_transforms():
  image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
  variants = [np.rot90(image[:, ::-1] if t >= 4 else image, t % 4) for t in range(8)]
  assert len({v.tobytes() for v in variants}) == 8
  out = tiny_clip.dihedral(np.repeat(image[None], 400, 0), np.random.default_rng(0))
  seen = [next(t for t, v in enumerate(variants) if np.array_equal(o, v)) for o in out]
  assert set(seen) == set(range(8))   # every output is one of them, and all occur


def test_unknown_init_is_refused():
  class Cfg:
    init = "orthogonal"
  with pytest.raises(UserError, match="config.clip.init=.orthogonal."):
    tiny_clip.check(Cfg())
