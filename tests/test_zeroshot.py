"""The zero-shot classifier and evaluator against independent NumPy/HF computations."""

import jax
import numpy as np
import pytest
import transformers

from zoomshot_jax import data, evaluation, sharding
from zoomshot_jax.encoders import load_clip
from zoomshot_jax.evaluation import classifier as classifier_lib
from zoomshot_jax.evaluation.classnames import Prompts

PROMPTS = Prompts(("blue triangle", "green circle", "red square"),
                  ("a photo of a {}.", "a drawing of the {}.", "{}"), "test")


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
  return load_clip(tiny_clip_dir)


@pytest.fixture(scope="module")
def hf_clip(tiny_clip_dir):
  # _do_init=False skips HF's eager random init (~10 s); params come from disk.
  model, params = transformers.FlaxCLIPModel.from_pretrained(tiny_clip_dir, _do_init=False)
  return model, params, transformers.AutoTokenizer.from_pretrained(tiny_clip_dir)


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_classifier(hf_clip, prompts):
  """W by METHODS.md, through HF's public API and NumPy only."""
  model, params, tok = hf_clip
  w = []
  for c in prompts.classnames:
    enc = tok([t.format(c) for t in prompts.templates], padding="max_length", max_length=77,
              truncation=True, return_tensors="np")
    # jit only to avoid op-by-op dispatch; the computation is HF's own.
    t = np.asarray(jax.jit(model.get_text_features)(enc["input_ids"], enc["attention_mask"],
                                                    params=params))
    w.append(_np_normalize(_np_normalize(t).mean(axis=0)))
  return np.stack(w)


def test_classifier_matches_reference(clip, hf_clip):
  w = evaluation.build_classifier(clip, PROMPTS, batch_size=8, cache_dir=None)
  ref = _reference_classifier(hf_clip, PROMPTS)
  assert w.shape == (3, clip.dim)
  np.testing.assert_allclose(w, ref, atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(w, axis=-1), 1.0, atol=1e-5)


def test_classifier_cache_hits_and_keys(clip, tmp_path, monkeypatch):
  w = evaluation.build_classifier(clip, PROMPTS, batch_size=8, cache_dir=str(tmp_path))
  files = list((tmp_path / "classifiers").glob("*.npy"))
  assert len(files) == 1

  def fail(*a, **k):
    raise AssertionError("cache miss")
  monkeypatch.setattr(classifier_lib, "encode_texts", fail)
  np.testing.assert_array_equal(
      evaluation.build_classifier(clip, PROMPTS, batch_size=8, cache_dir=str(tmp_path)), w)
  other = Prompts(PROMPTS.classnames, PROMPTS.templates[:1], "test")
  assert classifier_lib.cache_key(clip, other) != classifier_lib.cache_key(clip, PROMPTS)
  with pytest.raises(AssertionError, match="cache miss"):
    evaluation.build_classifier(clip, other, cache_dir=str(tmp_path))


def _reference_eval(hf_clip, clip, source, w):
  """Logits and accuracies from HF's image tower and NumPy, on the same pixels."""
  model, params, _ = hf_clip
  ds, _ = source.host_shard()
  images, labels = [], []
  for ex in ds.as_numpy_iterator():
    images.append(data.preprocess_image(ex["image"], clip.preprocess).numpy())
    labels.append(ex["label"])
  x = clip.preprocess.normalize_np(np.stack(images)).transpose(0, 3, 1, 2)  # NCHW for HF
  feats = np.asarray(jax.jit(model.get_image_features)(x, params=params))
  scale = float(np.exp(np.asarray(params["logit_scale"])))
  logits = scale * _np_normalize(feats) @ w.T
  labels = np.asarray(labels)
  order = np.argsort(-logits, axis=1, kind="stable")
  top1 = 100 * np.mean(order[:, 0] == labels)
  top5 = 100 * np.mean([(lab in row[:min(5, w.shape[0])]) for lab, row in zip(labels, order)])
  return logits, labels, top1, top5


@pytest.mark.parametrize("num_devices", [1, 8])
def test_evaluate_matches_numpy_reference(clip, hf_clip, image_folder, num_devices):
  source = data.folder_source(image_folder)
  w = _reference_classifier(hf_clip, source_prompts(source))
  mesh = sharding.make_mesh([("data", -1)], devices=jax.devices()[:num_devices])
  # 21 examples in batches of 8: the last batch is padded with 3 masked rows.
  res = evaluation.evaluate(clip.image_features, clip.params, clip.preprocess, w,
                            clip.logit_scale, source, mesh, batch_size=8, keep_logits=True)
  logits, labels, top1, top5 = _reference_eval(hf_clip, clip, source, w)
  assert res.num_examples == 21
  np.testing.assert_array_equal(res.labels, labels)
  np.testing.assert_allclose(res.logits, logits, rtol=1e-4, atol=1e-4)
  assert res.top1 == pytest.approx(top1) and res.top5 == pytest.approx(top5)


def source_prompts(source):
  return evaluation.get_prompts(source.name, source.num_classes, source.label_names)


def test_topk_counts_on_known_logits():
  """Hand-worked case: classes ranked by a fixed feature, labels chosen per rank."""
  k = 7
  w = np.eye(k, dtype=np.float32)
  feats = np.tile(np.arange(k, 0, -1, dtype=np.float32), (k, 1))  # class 0 best, 6 worst
  labels = np.arange(k)  # example i's label is ranked i-th
  mesh = sharding.make_mesh([("data", -1)], devices=jax.devices()[:1])
  step = evaluation.zeroshot._make_step(lambda v, x: x, 1.0, 5, mesh)
  counts, _ = step({}, w, feats, labels.astype(np.int32), np.ones(k, bool))
  assert int(counts["top1"]) == 1 and int(counts["topk"]) == 5 and int(counts["n"]) == 7
  mask = np.array([True] * 3 + [False] * 4)
  counts, _ = step({}, w, feats, labels.astype(np.int32), mask)
  assert (int(counts["top1"]), int(counts["topk"]), int(counts["n"])) == (1, 3, 3)
