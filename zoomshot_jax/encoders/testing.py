"""Tiny random checkpoints written with `save_pretrained`, for tests and demos.

They go through exactly the loading path of real checkpoints (config.json,
Flax weights, tokenizer files, preprocessor_config.json in a directory), so a
test that loads them exercises what users run on real weights.
"""

from __future__ import annotations

import json
import os

from zoomshot_jax.encoders import params as params_lib

# Byte-level BPE with no merges: every byte is a token, word-final bytes get a
# "</w>" twin. Valid for CLIPTokenizer and small enough for a tiny model.
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def write_byte_tokenizer(path: str, max_length: int = 77) -> int:
  """Writes CLIP tokenizer files to `path`; returns the vocabulary size.

  EOS gets the highest id, as in OpenAI's vocabulary: the Flax CLIP text tower
  pools the position of the largest token id.
  """
  from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
  from transformers.models.clip.tokenization_clip import bytes_to_unicode  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  chars = list(bytes_to_unicode().values())
  vocab = chars + [c + "</w>" for c in chars] + list(_SPECIAL)
  with open(os.path.join(path, "vocab.json"), "w") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f)
  with open(os.path.join(path, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
  tok = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"),
                      model_max_length=max_length)
  tok.save_pretrained(path)
  return len(vocab)


def write_preprocessor(path: str, kind: str, image_size: int, **extra):
  d = {"image_processor_type": kind, "do_resize": True, "do_rescale": True,
       "rescale_factor": 1 / 255, "do_normalize": True, "resample": 3, **extra}
  d.setdefault("size", {"height": image_size, "width": image_size})
  d.setdefault("image_mean", [0.5, 0.5, 0.5])
  d.setdefault("image_std", [0.5, 0.5, 0.5])
  with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
    json.dump(d, f)


def tiny_clip_config(vocab_size: int, image_size: int = 32, width: int = 32,
                     projection_dim: int = 16):
  from transformers import CLIPConfig  # pylint: disable=g-import-not-at-top

  return CLIPConfig(
      text_config=dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=77, eos_token_id=vocab_size - 1,
                       bos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1),
      vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, image_size=image_size, patch_size=8),
      projection_dim=projection_dim)


def save_tiny_clip(path: str, seed: int = 0, image_size: int = 32) -> str:
  """A random tiny CLIP with tokenizer and CLIP preprocessing, at `path`."""
  from transformers import FlaxCLIPModel  # pylint: disable=g-import-not-at-top

  vocab_size = write_byte_tokenizer(path)
  model = FlaxCLIPModel(tiny_clip_config(vocab_size, image_size), _do_init=False)
  model.save_pretrained(path, params=params_lib.random_params(model, seed))
  write_preprocessor(
      path, "CLIPImageProcessor", image_size, size={"shortest_edge": image_size},
      crop_size={"height": image_size, "width": image_size}, do_center_crop=True,
      image_mean=[0.48145466, 0.4578275, 0.40821073],
      image_std=[0.26862954, 0.26130258, 0.27577711])
  return path


def tiny_vision_config(name: str, image_size: int = 32):
  import transformers  # pylint: disable=g-import-not-at-top

  vit_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8)
  return {
      "vit": lambda: transformers.ViTConfig(intermediate_size=64, **vit_like),
      "dinov2": lambda: transformers.Dinov2Config(mlp_ratio=2, **vit_like),
      "beit": lambda: transformers.BeitConfig(intermediate_size=64, use_mean_pooling=True,
                                              **vit_like),
      "resnet": lambda: transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                  depths=[1, 1], layer_type="basic"),
      "regnet": lambda: transformers.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                  depths=[1, 1], groups_width=8),
  }[name]()


def save_tiny_vision(name: str, path: str, seed: int = 0, image_size: int = 32) -> str:
  """A random tiny vision encoder `name` (see encoders.ARCHS) at `path`."""
  import transformers  # pylint: disable=g-import-not-at-top

  from zoomshot_jax.encoders.vision import ARCHS  # pylint: disable=g-import-not-at-top

  cls = getattr(transformers, ARCHS[name].model_cls)
  model = cls(tiny_vision_config(name, image_size), _do_init=False)
  os.makedirs(path, exist_ok=True)
  model.save_pretrained(path, params=params_lib.random_params(model, seed))
  if name in ("resnet", "regnet"):
    write_preprocessor(path, "ConvNextImageProcessor", image_size,
                        size={"shortest_edge": image_size}, crop_pct=0.875,
                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
  elif name == "dinov2":
    write_preprocessor(path, "BitImageProcessor", image_size,
                        size={"shortest_edge": image_size + image_size // 7},
                        crop_size={"height": image_size, "width": image_size},
                        do_center_crop=True)
  else:
    write_preprocessor(path, "ViTImageProcessor", image_size)
  return path


def _write_wordpiece_tokenizer(path: str) -> int:
  """BERT WordPiece files: specials, then every printable ASCII character as
  a word start and as a "##" continuation, so any ASCII text tokenizes."""
  from transformers import BertTokenizerFast  # pylint: disable=g-import-not-at-top

  chars = [chr(c) for c in range(33, 127)]
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab) + "\n")
  BertTokenizerFast(os.path.join(path, "vocab.txt"), do_lower_case=False).save_pretrained(path)
  return len(vocab)


def _write_roberta_tokenizer(path: str) -> int:
  """Byte-level BPE with no merges and RoBERTa's special tokens (<pad> = 1)."""
  from transformers import RobertaTokenizer  # pylint: disable=g-import-not-at-top
  from transformers.models.clip.tokenization_clip import bytes_to_unicode  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  vocab = ["<s>", "<pad>", "</s>", "<unk>"] + list(bytes_to_unicode().values()) + ["<mask>"]
  with open(os.path.join(path, "vocab.json"), "w") as f:
    json.dump({tok: i for i, tok in enumerate(vocab)}, f)
  with open(os.path.join(path, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
  RobertaTokenizer(os.path.join(path, "vocab.json"),
                   os.path.join(path, "merges.txt")).save_pretrained(path)
  return len(vocab)


def tiny_text_config(name: str, vocab_size: int):
  import transformers  # pylint: disable=g-import-not-at-top

  bert_like = dict(vocab_size=vocab_size, hidden_size=24, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=48, max_position_embeddings=66)
  return {
      "bert": lambda: transformers.BertConfig(**bert_like),
      "roberta": lambda: transformers.RobertaConfig(pad_token_id=1, **bert_like),
      "xlm-roberta": lambda: transformers.XLMRobertaConfig(pad_token_id=1, **bert_like),
      "distilbert": lambda: transformers.DistilBertConfig(
          vocab_size=vocab_size, dim=24, n_layers=2, n_heads=4, hidden_dim=48,
          max_position_embeddings=64),
  }[name]()


def save_tiny_text(name: str, path: str, seed: int = 0) -> str:
  """A random tiny text encoder `name` (see encoders.text.ARCHS) with its
  tokenizer at `path`; hidden size 24."""
  import transformers  # pylint: disable=g-import-not-at-top

  from zoomshot_jax.encoders.text import ARCHS as TEXT_ARCHS  # pylint: disable=g-import-not-at-top

  if name in ("roberta", "xlm-roberta"):
    vocab_size = _write_roberta_tokenizer(path)
  else:
    vocab_size = _write_wordpiece_tokenizer(path)
  cls = getattr(transformers, TEXT_ARCHS[name].model_cls)
  model = cls(tiny_text_config(name, vocab_size), _do_init=False)
  model.save_pretrained(path, params=params_lib.random_params(model, seed))
  return path
