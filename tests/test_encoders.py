"""The encoder registry against HF's own public Flax API, on tiny checkpoints.

Every reference below is computed the way a user of `transformers` would:
`FlaxXModel.from_pretrained(dir)`, NCHW float pixels normalised in NumPy with
the mean/std read from the checkpoint's preprocessor_config.json, then the
pooled output picked from the model's outputs. Our path (NHWC, normalisation
on device, pooling inside a pure function) must agree with it.
"""

import json
import math
import os
import shutil
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from zoomshot_jax.encoders import load_clip, load_vision_encoder
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError

# Written out here rather than read from ARCHS, so that a wrong registry entry
# (class, pooling list or default) fails the test.
HF_CLASS = {"vit": "FlaxViTModel", "dinov2": "FlaxDinov2Model", "beit": "FlaxBeitModel",
            "resnet": "FlaxResNetModel", "regnet": "FlaxRegNetModel"}
POOLINGS = {"vit": ("cls", "mean", "pooler"), "dinov2": ("cls", "mean", "pooler"),
            "beit": ("pooler", "cls", "mean"), "resnet": ("pooler", "mean"),
            "regnet": ("pooler", "mean")}
DEFAULT_POOLING = {"vit": "cls", "dinov2": "cls", "beit": "pooler", "resnet": "pooler",
                   "regnet": "pooler"}
ALL_ENCODERS = ("clip", "vit", "dinov2", "beit", "resnet", "regnet")


@pytest.fixture(scope="module")
def images():
  """[3, 32, 32, 3] uint8: the tiny checkpoints' input size, batch not a power of 2."""
  return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
  return load_clip(tiny_clip_dir)


def _nchw_pixels(checkpoint, images):
  """HF's expected input: (x / 255 - mean) / std, NCHW float32, in NumPy."""
  with open(os.path.join(checkpoint, "preprocessor_config.json")) as f:
    pp = json.load(f)
  x = (images.astype(np.float64) / 255.0 - np.asarray(pp["image_mean"])) / np.asarray(
      pp["image_std"])
  return x.transpose(0, 3, 1, 2).astype(np.float32)


# Image towers run eagerly: op-by-op executables are cached by shape and
# dtype, so the variants of one tiny architecture (poolings, HF's reference)
# share them, where jit compiles each variant afresh (~1 s each). One-off
# variants (bf16, text towers at several lengths) are cheaper under jit.
def _features(encoder, images, jit=False):
  fn = jax.jit(encoder.image_features) if jit else encoder.image_features
  return np.asarray(fn(encoder.variables, images))


def _assert_close(ours, ref, rtol=1e-4):
  """Tight float32 agreement, relative to the features' scale (random tiny
  models give features of very different magnitudes per architecture)."""
  ref = np.asarray(ref)
  assert ours.shape == ref.shape and ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def _cosine(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("name", sorted(HF_CLASS))
def test_vision_encoder_matches_hf_for_every_pooling(name, tiny_vision_dirs, images):
  checkpoint = tiny_vision_dirs[name]
  cls = getattr(transformers, HF_CLASS[name])
  # The default add_pooling_layer=True keeps ViT's pooler, so one model gives
  # the reference of every pooling.
  model, params = cls.from_pretrained(checkpoint, _do_init=False)
  out = model(_nchw_pixels(checkpoint, images), params=params)
  hidden, pooled = np.asarray(out.last_hidden_state), np.asarray(out.pooler_output)
  if name in ("resnet", "regnet"):  # NCHW maps, [B, C, 1, 1] pooled output
    refs = {"pooler": pooled.reshape(len(images), -1), "mean": hidden.mean(axis=(2, 3))}
  else:  # [B, tokens, D] with the CLS token first
    refs = {"pooler": pooled, "cls": hidden[:, 0], "mean": hidden[:, 1:].mean(axis=1)}
  assert set(refs) == set(POOLINGS[name])
  # The references must tell images apart, or agreeing with them proves little.
  assert not np.allclose(refs["pooler"][0], refs["pooler"][1], rtol=1e-3)
  if "cls" in refs:
    assert not np.allclose(refs["cls"], refs["mean"], rtol=1e-2)

  for pooling in POOLINGS[name]:
    encoder = load_vision_encoder(name, checkpoint, pooling=pooling)
    assert encoder.pooling == pooling
    assert encoder.preprocess.image_size == 32
    assert encoder.dim == refs[pooling].shape[-1]
    _assert_close(_features(encoder, images), refs[pooling])

  default = load_vision_encoder(name, checkpoint)
  assert default.pooling == DEFAULT_POOLING[name]


def test_clip_image_features_match_hf(tiny_clip_dir, clip, images):
  model, params = transformers.FlaxCLIPModel.from_pretrained(tiny_clip_dir, _do_init=False)
  ref = model.get_image_features(_nchw_pixels(tiny_clip_dir, images), params=params)
  assert not np.allclose(ref[0], ref[1], rtol=1e-3)
  ours = np.asarray(clip.image_features(clip.params, images))
  _assert_close(ours, ref)
  assert clip.dim == ref.shape[-1] == 16
  # The registry's "clip" vision encoder is the same image tower.
  encoder = load_vision_encoder("clip", tiny_clip_dir)
  assert encoder.dim == clip.dim and encoder.preprocess == clip.preprocess
  _assert_close(_features(encoder, images), ref)


TEXTS = ["a photo of a cat.", "a photo of the big dog on a mat.", "x"]


def test_clip_text_features_match_hf_and_ignore_padding(tiny_clip_dir, clip):
  # HF's slow (pure Python) tokenizer as the reference, not the fast one
  # load_clip picks up.
  slow = transformers.CLIPTokenizer.from_pretrained(tiny_clip_dir)
  enc = slow(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")
  ours77 = clip.tokenize(TEXTS, pad_to=77)
  np.testing.assert_array_equal(ours77["input_ids"], enc["input_ids"])
  np.testing.assert_array_equal(ours77["attention_mask"], enc["attention_mask"])

  model, params = transformers.FlaxCLIPModel.from_pretrained(tiny_clip_dir, _do_init=False)
  ref = jax.jit(lambda p, i, m: model.get_text_features(i, m, params=p))(
      params, enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32))
  assert not np.allclose(ref[0], ref[1], rtol=1e-3)
  text_features = jax.jit(clip.text_features)
  _assert_close(np.asarray(text_features(clip.params, **ours77)), ref)

  # Padded only to the longest text: the same features.
  short = clip.tokenize(TEXTS)
  longest = max(len(ids) for ids in slow(TEXTS)["input_ids"])
  assert short["input_ids"].shape == (3, longest) and short["input_ids"].dtype == np.int32
  _assert_close(np.asarray(text_features(clip.params, **short)), ref)


def test_tokenizer_pads_and_truncates_to_77(tiny_clip_dir, clip):
  with open(os.path.join(tiny_clip_dir, "config.json")) as f:
    text_config = json.load(f)["text_config"]
  bos, eos = text_config["bos_token_id"], text_config["eos_token_id"]
  long_text = "a very long prompt " * 60  # far over 77 tokens
  tok = clip.tokenize(["a cat", long_text])
  ids, mask = tok["input_ids"], tok["attention_mask"]
  assert ids.shape == (2, 77)
  assert mask[1].all() and ids[1, 0] == bos and ids[1, -1] == eos
  n = int(mask[0].sum())
  assert ids[0, 0] == bos and ids[0, n - 1] == eos and not mask[0, n:].any()
  assert (ids[:, 1:-1] != eos).any()  # content, not just specials
  # The truncated text is the prefix of the full tokenization.
  full = transformers.CLIPTokenizer.from_pretrained(tiny_clip_dir)(long_text)["input_ids"]
  assert len(full) > 77
  np.testing.assert_array_equal(ids[1, :76], full[:76])
  # Explicit padding never exceeds the context length either.
  assert clip.tokenize([long_text], pad_to=77)["input_ids"].shape == (1, 77)


def _stored_logit_scale(checkpoint):
  with open(os.path.join(checkpoint, "flax_model.msgpack"), "rb") as f:
    return float(flax.serialization.msgpack_restore(f.read())["logit_scale"])


def test_logit_scale_is_exp_of_stored_parameter(tiny_clip_dir, clip):
  stored = _stored_logit_scale(tiny_clip_dir)
  assert clip.logit_scale == pytest.approx(math.exp(stored), rel=1e-6)
  assert clip.logit_scale == pytest.approx(math.exp(2.6592), rel=1e-4)  # HF's init value


def test_bfloat16_params_float32_outputs_close_to_float32(tiny_vision_dirs, tiny_clip_dir,
                                                          clip, images):
  def assert_bf16(tree):
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)

  for name, pooling in (("dinov2", "mean"), ("resnet", "pooler")):
    f32 = load_vision_encoder(name, tiny_vision_dirs[name], pooling=pooling)
    bf16 = load_vision_encoder(name, tiny_vision_dirs[name], pooling=pooling, dtype="bfloat16")
    assert_bf16(bf16.variables)
    a, b = _features(f32, images), _features(bf16, images, jit=True)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert (_cosine(a, b) > 0.99).all(), (name, _cosine(a, b))
    assert not np.array_equal(a, b)  # really computed in bf16

  clip16 = load_clip(tiny_clip_dir, dtype="bfloat16")
  assert_bf16({k: v for k, v in clip16.params.items() if k != "logit_scale"})
  # exp() of a bf16 logit scale would be off by up to ~0.4%.
  assert clip16.logit_scale == pytest.approx(clip.logit_scale, rel=1e-6)
  a = np.asarray(clip.image_features(clip.params, images))
  b = np.asarray(jax.jit(clip16.image_features)(clip16.params, images))
  assert b.dtype == np.float32 and (_cosine(a, b) > 0.99).all()
  tok = clip.tokenize(TEXTS)
  a = np.asarray(jax.jit(clip.text_features)(clip.params, **tok))
  b = np.asarray(jax.jit(clip16.text_features)(clip16.params, **tok))
  assert b.dtype == np.float32 and (_cosine(a, b) > 0.99).all()


def test_unknown_encoder_names_the_known_ones(tiny_vision_dirs):
  with pytest.raises(UserError) as e:
    load_vision_encoder("dinov3", tiny_vision_dirs["vit"])
  assert "'dinov3'" in str(e.value)
  for known in ALL_ENCODERS:
    assert f"'{known}'" in str(e.value)


@pytest.mark.parametrize("name,pooling", [("resnet", "cls"), ("regnet", "cls"),
                                          ("vit", "avg"), ("clip", "mean")])
def test_pooling_not_allowed_for_arch(name, pooling, tiny_vision_dirs, tiny_clip_dir):
  checkpoint = tiny_clip_dir if name == "clip" else tiny_vision_dirs[name]
  with pytest.raises(UserError) as e:
    load_vision_encoder(name, checkpoint, pooling=pooling)
  msg = str(e.value)
  assert f"{pooling!r}" in msg
  if name != "clip":
    assert name in msg and all(repr(p) in msg for p in POOLINGS[name])


def test_checkpoint_of_another_model_type(tiny_vision_dirs, tiny_clip_dir):
  with pytest.raises(UserError) as e:
    load_vision_encoder("dinov2", tiny_vision_dirs["vit"])
  assert "'vit'" in str(e.value) and "dinov2" in str(e.value)
  with pytest.raises(UserError) as e:
    load_clip(tiny_vision_dirs["resnet"])
  assert "'resnet'" in str(e.value) and "clip" in str(e.value)


def test_directory_without_config(tmp_path):
  empty = tmp_path / "no_config"
  empty.mkdir()
  for load in (lambda: load_vision_encoder("vit", str(empty)), lambda: load_clip(str(empty))):
    with pytest.raises(UserError) as e:
      load()
    msg = str(e.value)
    assert str(empty) in msg and "config.json" in msg
    assert len(msg) < 1000, msg  # a readable message, not HF's list of every model type


def test_clip_directory_without_tokenizer(tiny_clip_dir, tmp_path):
  weights_only = tmp_path / "clip_no_tokenizer"
  weights_only.mkdir()
  for f in ("config.json", "flax_model.msgpack", "preprocessor_config.json"):
    shutil.copy(os.path.join(tiny_clip_dir, f), weights_only / f)
  with pytest.raises(UserError) as e:
    load_clip(str(weights_only))
  assert "tokenizer" in str(e.value) and str(weights_only) in str(e.value)


def test_unknown_dtype(tiny_vision_dirs):
  with pytest.raises(UserError, match="float64"):
    load_vision_encoder("vit", tiny_vision_dirs["vit"], dtype="float64")


def test_random_params_fast_deterministic_and_shaped_like_checkpoint(tiny_vision_dirs,
                                                                     tiny_clip_dir):
  checkpoint = tiny_vision_dirs["vit"]
  model, saved = transformers.FlaxViTModel.from_pretrained(checkpoint, _do_init=False)
  start = time.perf_counter()
  p1 = params_lib.random_params(model, seed=7)
  elapsed = time.perf_counter() - start
  # Shapes come from tracing alone; HF's init_weights compiles the network.
  assert elapsed < 3.0, elapsed
  p2 = params_lib.random_params(model, seed=7)
  p3 = params_lib.random_params(model, seed=8)
  flat1 = jax.tree_util.tree_flatten_with_path(p1)[0]
  flat_saved = jax.tree_util.tree_flatten_with_path(saved)[0]
  assert [(k, v.shape) for k, v in flat1] == [(k, v.shape) for k, v in flat_saved]
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(a, b)
  kernels = [(np.asarray(v), np.asarray(w)) for (k, v), w in zip(flat1, jax.tree.leaves(p3))
             if "kernel" in jax.tree_util.keystr(k)]
  assert kernels and not any(np.array_equal(a, b) for a, b in kernels)
  all_kernels = np.concatenate([a.ravel() for a, _ in kernels])
  assert abs(all_kernels.std() - 0.02) < 0.002
  for k, v in flat1:
    key = jax.tree_util.keystr(k)
    if key.endswith("['bias']"):
      assert not np.asarray(v).any(), key
    if "layernorm" in key and key.endswith("['scale']"):
      assert (np.asarray(v) == 1).all(), key

  # Through the loaders: same seed, same weights; the model runs on them.
  a = load_vision_encoder("vit", checkpoint, random_init=True, seed=3)
  b = load_vision_encoder("vit", checkpoint, random_init=True, seed=3)
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    np.testing.assert_array_equal(x, y)
  c1 = load_clip(tiny_clip_dir, random_init=True, seed=3)
  c2 = load_clip(tiny_clip_dir, random_init=True, seed=3)
  for x, y in zip(jax.tree.leaves(c1.params), jax.tree.leaves(c2.params)):
    np.testing.assert_array_equal(x, y)
  assert c1.logit_scale == pytest.approx(math.exp(2.6592), rel=1e-4)
