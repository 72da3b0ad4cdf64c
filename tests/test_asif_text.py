"""Unimodal text encoders (encoders/text.py) against HF's own Flax models and NumPy.

The reference is what a sentence-transformers user computes: the HF model's
last hidden states, averaged over the tokens the attention mask keeps
(Pooling(mode="mean")), or the first token (CLS).
"""

import numpy as np
import pytest
import transformers

from zoomshot_jax import encoders, evaluation
from zoomshot_jax.encoders import testing
from zoomshot_jax.errors import UserError

TEXTS = ["a photo of a cat", "dog", "a much longer caption, with punctuation and 7 words!"]
HF_CLASS = {"bert": "FlaxBertModel", "roberta": "FlaxRobertaModel",
            "xlm-roberta": "FlaxXLMRobertaModel", "distilbert": "FlaxDistilBertModel"}


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("text")
  return {name: testing.save_tiny_text(name, str(root / name), seed=3) for name in HF_CLASS}


def _reference(path, name, pooling):
  tok = transformers.AutoTokenizer.from_pretrained(path)
  # _do_init=False skips HF's eager random init (seconds); weights come from disk.
  model, params = getattr(transformers, HF_CLASS[name]).from_pretrained(path, _do_init=False)
  enc = tok(TEXTS, padding=True, return_tensors="np")
  hidden = np.asarray(model(enc["input_ids"], attention_mask=enc["attention_mask"],
                            params=params).last_hidden_state, np.float64)
  if pooling == "cls":
    return hidden[:, 0]
  mask = enc["attention_mask"][..., None]
  return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("name", sorted(HF_CLASS))
def test_text_features_match_hf(text_dirs, name):
  enc = encoders.load_text_encoder(name, text_dirs[name])
  assert enc.pooling == "mean" and enc.dim == 24
  tokens = enc.tokenize(TEXTS)
  ours = np.asarray(enc.text_features(enc.params, tokens["input_ids"], tokens["attention_mask"]))
  ref = _reference(text_dirs[name], name, "mean")
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
  # Padding never changes a text's features: alone, it has no padding at all.
  alone = enc.tokenize(TEXTS[1:2])
  np.testing.assert_allclose(
      np.asarray(enc.text_features(enc.params, alone["input_ids"], alone["attention_mask"]))[0],
      ours[1], rtol=1e-4, atol=1e-5)
  if name == "bert":
    cls = encoders.load_text_encoder(name, text_dirs[name], pooling="cls")
    np.testing.assert_allclose(
        np.asarray(cls.text_features(cls.params, tokens["input_ids"], tokens["attention_mask"])),
        _reference(text_dirs[name], name, "cls"), rtol=1e-4, atol=1e-5)
    # encode_texts serves text encoders as it serves CLIP: unit rows, in order.
    unit = evaluation.encode_texts(enc, TEXTS, batch_size=8)
    np.testing.assert_allclose(unit, ref / np.linalg.norm(ref, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)


def test_clip_text_tower_as_text_encoder(tiny_clip_dir):
  enc = encoders.load_text_encoder("clip", tiny_clip_dir)
  clip = encoders.load_clip(tiny_clip_dir)
  np.testing.assert_allclose(evaluation.encode_texts(enc, TEXTS, 8),
                             evaluation.encode_texts(clip, TEXTS, 8), rtol=1e-6)
  assert enc.dim == clip.dim and enc.pooling == "pooler"


def test_bad_text_encoders(text_dirs, tiny_clip_dir):
  with pytest.raises(UserError, match="unknown text encoder 'gpt2'"):
    encoders.load_text_encoder("gpt2", text_dirs["bert"])
  with pytest.raises(UserError, match="pooling='max' is not available"):
    encoders.load_text_encoder("bert", text_dirs["bert"], pooling="max")
  with pytest.raises(UserError, match="is a 'bert' checkpoint"):
    encoders.load_text_encoder("roberta", text_dirs["bert"])
  with pytest.raises(UserError, match="only 'pooler'"):
    encoders.load_text_encoder("clip", tiny_clip_dir, pooling="mean")
