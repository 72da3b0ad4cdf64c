"""The notebook API: embeddings and zero-shot probabilities."""

import os

import numpy as np
from PIL import Image

from zoomshot_jax import api


def test_embeddings_and_classify(tiny_clip_dir, image_folder):
  clip = api.load(tiny_clip_dir, batch_size=4)
  path = os.path.join(image_folder, "red_square", "0000.png")
  pil = Image.open(path)
  arr = np.asarray(pil.convert("RGB"))
  other = os.path.join(image_folder, "green_circle", "0001.png")
  emb = clip.embed_images([path, pil, arr, other, other])  # 5 images: a padded 2nd batch
  assert emb.shape == (5, clip.clip.dim) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
  # Path, PIL and array inputs are the same image; batch position does not matter.
  np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)
  np.testing.assert_allclose(emb[0], emb[2], atol=1e-6)
  np.testing.assert_allclose(clip.embed_images([other])[0], emb[4], atol=1e-5)
  assert not np.allclose(emb[0], emb[3])

  labels = ["red square", "green circle", "blue triangle"]
  probs = clip.classify([path, other], labels)
  txt = clip.embed_texts([f"a photo of a {l}." for l in labels])
  logits = clip.clip.logit_scale * emb[[0, 3]] @ txt.T
  ref = np.exp(logits - logits.max(1, keepdims=True))
  ref /= ref.sum(1, keepdims=True)
  np.testing.assert_allclose(probs, ref, atol=1e-5)
  np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
