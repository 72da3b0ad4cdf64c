"""Frozen unimodal text encoders from HF Flax: BERT-family sentence encoders.

ASIF (METHODS.md §3) pairs a unimodal image encoder with a unimodal text
encoder. Sentence encoders of the BERT family (sentence-transformers'
all-MiniLM-L6-v2 is a BERT, all-distilroberta-v1 a RoBERTa) pool the last
hidden states: `mean` averages the tokens under the attention mask, as
sentence-transformers' Pooling(mode="mean") does; `cls` takes the first token.

A `TextEncoder` has the interface of `CLIP`'s text side — `params`,
`tokenize(texts)` and a pure, jit-able `text_features(params, input_ids,
attention_mask) -> [batch, dim]` float32 — so `evaluation.encode_texts`
embeds texts with either. CLIP's own text tower is available under the name
`clip` (`encoders.load_text_encoder`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.clip import CLIP
from zoomshot_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class _Arch:
  model_cls: str          # transformers class name
  model_types: tuple      # accepted config.model_type values


ARCHS = {
    "bert": _Arch("FlaxBertModel", ("bert",)),
    "roberta": _Arch("FlaxRobertaModel", ("roberta",)),
    "xlm-roberta": _Arch("FlaxXLMRobertaModel", ("xlm-roberta",)),
    "distilbert": _Arch("FlaxDistilBertModel", ("distilbert",)),
}
POOLINGS = ("mean", "cls")  # the first is the default
# Longer captions are truncated; sentence-transformers' MiniLM models are
# trained on 128 tokens and truncate at 256.
DEFAULT_MAX_LENGTH = 128


def _pool(hidden, mask, pooling: str):
  if pooling == "cls":
    return hidden[:, 0]
  m = mask.astype(hidden.dtype)[..., None]
  # Masked mean; the clamp only matters for an all-padding row.
  return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


@dataclasses.dataclass
class TextEncoder:
  """A frozen text encoder: tokenizer, parameters and a pure feature function."""

  name: str
  checkpoint: str
  pooling: str
  dim: int
  params: Any
  tokenizer: Any
  max_length: int
  # (params, input_ids [B, L], attention_mask [B, L]) -> [B, dim]
  forward: Callable[[Any, jax.Array, jax.Array], jax.Array]
  dtype: str = "float32"

  def text_features(self, params, input_ids, attention_mask):
    """[batch, L] int32 token ids and mask -> [batch, dim] float32 (not normalised)."""
    return self.forward(params, input_ids, attention_mask).astype(jnp.float32)

  # CLIP's tokenize serves as it is: it uses only `tokenizer` and
  # `max_length` -> {"input_ids", "attention_mask"}: [n, L] int32.
  tokenize = CLIP.tokenize


def load_text_encoder(name: str, checkpoint: str, pooling: str = "default",
                      dtype: str = "float32", random_init: bool = False, seed: int = 0,
                      max_length: int = DEFAULT_MAX_LENGTH) -> TextEncoder:
  """Loads a BERT-family text encoder from a hub id or a local directory.

  Args:
    name: one of `ARCHS` (use `encoders.load_text_encoder` for checked names).
    checkpoint: hub id or directory written by `save_pretrained`, with the
      tokenizer files next to the weights.
    pooling: "mean" (masked mean of the last hidden states), "cls", or
      "default" (= "mean").
    dtype: compute and parameter dtype ("float32" or "bfloat16").
    max_length: tokens kept per text (also capped by the position table).
  """
  import transformers  # pylint: disable=g-import-not-at-top

  arch = ARCHS[name]
  pooling = POOLINGS[0] if pooling == "default" else pooling
  if pooling not in POOLINGS:
    raise UserError(f"pooling={pooling!r} is not available for text encoder {name}; "
                    f"choose one of {list(POOLINGS)}.")
  cls = getattr(transformers, arch.model_cls)
  jdtype = params_lib.compute_dtype(dtype)
  # The pooler (a dense layer on CLS) is no part of sentence-encoder pooling.
  extra = {} if name == "distilbert" else {"add_pooling_layer": False}
  model, params = params_lib.load_model(cls, checkpoint, arch.model_types, jdtype,
                                        f"{name} checkpoint", random_init, seed, **extra)
  params = params_lib.cast_floating(params, jdtype)
  tokenizer = params_lib.load_tokenizer(checkpoint, f"{name} checkpoint")
  config = model.config
  # RoBERTa's position table starts after the padding index (2 slots).
  offset = 2 if config.model_type in ("roberta", "xlm-roberta") else 0
  limit = int(config.max_position_embeddings) - offset
  if max_length <= 0:
    raise UserError(f"text max_length={max_length} must be positive.")

  def forward(p, input_ids, attention_mask):
    # HF's __call__ fills token types, positions (RoBERTa's padding-aware
    # ones) and head masks, and is pure in `params`.
    out = model(input_ids, attention_mask=attention_mask, params=p, train=False)
    return _pool(out.last_hidden_state, attention_mask, pooling)

  dim = int(getattr(config, "hidden_size", 0) or config.dim)
  return TextEncoder(name=name, checkpoint=checkpoint, pooling=pooling, dim=dim,
                     params=params, tokenizer=tokenizer, max_length=min(max_length, limit),
                     forward=forward, dtype=dtype)
