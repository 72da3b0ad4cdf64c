"""The CLIP-TD student: a single-stream vision-language transformer (METHODS.md §5).

ViLT's layout on HF's Flax BERT modules. The sequence is [text ; image]:
  text   BERT's embeddings (word + position + token type, LayerNorm)
  image  a [CLS]-like image token, then the patch embedding of the pixels (a
         Conv with kernel = stride = patch size, as ViT's) or a Dense
         projection of a frozen image encoder's tokens [B, T, D_img]; plus
         learned image position embeddings, then a LayerNorm
each plus a modality-type embedding (text 0, image 1, as ViLT), then one
`FlaxBertEncoder` over the concatenation and BERT's pooler (tanh Dense on the
first token, the text [CLS]). transformers 4.x has no Flax VL model, and
`FlaxBertModel` takes no `inputs_embeds`, hence the modules.

The parameters under `embeddings`, `encoder` and `pooler` have
`FlaxBertModel`'s names and shapes, so `load_bert_weights` copies a BERT
checkpoint in by name; `load_vit_patch_embedding` starts the image tokens from
a ViT. Images are NHWC floats, normalised as the ViT they come from expects.
The student's token i is the teacher's token at the same position: text tokens
first (`VLOutput.num_text` of them), then the image token and the patches in
row-major order, as CLIP's ViT lays them out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoomshot_jax import sharding
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError

IMAGE_INPUTS = ("pixels", "features")
# BertConfig's fields that the text side and the encoder take as they are.
_BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
                "layer_norm_eps", "initializer_range", "hidden_dropout_prob",
                "attention_probs_dropout_prob")


@dataclasses.dataclass(frozen=True)
class VLConfig:
  """The student's shape; the text/encoder fields are BertConfig's names."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512   # text positions
  type_vocab_size: int = 2             # BERT segments (question / candidate)
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  image_input: str = "pixels"          # "pixels" | "features"
  image_size: int = 384                # pixels: square side
  patch_size: int = 32
  num_channels: int = 3
  image_feature_dim: int = 0           # features: D_img
  max_image_tokens: int = 0            # features: most tokens T per image
  dtype: str = "float32"               # computation; parameters stay float32

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_image_tokens(self) -> int:
    """Image tokens in the sequence, the [CLS]-like one included."""
    if self.image_input == "pixels":
      return 1 + self.grid**2
    return 1 + self.max_image_tokens


# `world_tiny` is for the demo world and tests (set vocab_size to its
# tokenizer's); `vilt_b32` is ViLT-B/32's shape: BERT-base, 384 px, patch 32.
PRESETS = {
    "world_tiny": dict(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128,
                       max_position_embeddings=32, image_size=32, patch_size=8),
    "vilt_b32": dict(image_size=384, patch_size=32),
}


def check(cfg: VLConfig, what: str = "config.student") -> VLConfig:
  """Raises UserError on an inconsistent config; returns it."""
  if cfg.hidden_size % cfg.num_attention_heads:
    raise UserError(f"{what}: hidden_size={cfg.hidden_size} is not a multiple of "
                    f"num_attention_heads={cfg.num_attention_heads}.")
  if cfg.image_input not in IMAGE_INPUTS:
    raise UserError(f"{what}.image_input={cfg.image_input!r}: expected one of "
                    f"{list(IMAGE_INPUTS)}.")
  if cfg.image_input == "pixels" and (cfg.image_size % cfg.patch_size or
                                      cfg.image_size < cfg.patch_size):
    raise UserError(f"{what}: image_size={cfg.image_size} must be a positive multiple of "
                    f"patch_size={cfg.patch_size}.")
  if cfg.image_input == "features" and (cfg.image_feature_dim <= 0 or
                                        cfg.max_image_tokens <= 0):
    raise UserError(f"{what}.image_input='features' needs image_feature_dim (D_img) and "
                    f"max_image_tokens (T) > 0; got {cfg.image_feature_dim} and "
                    f"{cfg.max_image_tokens}.")
  params_lib.compute_dtype(cfg.dtype)
  return cfg


def get_config(preset: str, overrides: Mapping[str, Any] | None = None,
               what: str = "config.student") -> VLConfig:
  """The preset's config with `overrides` (field -> value) applied."""
  if preset not in PRESETS:
    raise UserError(f"{what}.preset={preset!r}: expected one of {sorted(PRESETS)}.")
  fields = {f.name for f in dataclasses.fields(VLConfig)}
  unknown = sorted(set(overrides or {}) - fields)
  if unknown:
    raise UserError(f"{what}.overrides: {unknown} are not student fields; choose from "
                    f"{sorted(fields)}.")
  return check(VLConfig(**{**PRESETS[preset], **dict(overrides or {})}), what)


def from_bert_config(checkpoint: str, base: VLConfig,
                     what: str = "config.student.bert_checkpoint") -> VLConfig:
  """`base` with its text/encoder fields read from a BERT checkpoint's config
  (a hub id or a save_pretrained directory), so `load_bert_weights` fits."""
  bert = params_lib.load_config(checkpoint, ("bert",), what)
  return check(dataclasses.replace(base, **{k: getattr(bert, k) for k in _BERT_FIELDS}))


def bert_config(cfg: VLConfig):
  """The transformers.BertConfig that the HF modules read."""
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.BertConfig(**{k: getattr(cfg, k) for k in _BERT_FIELDS})


def _hf():
  """HF's Flax BERT and ViT modules, imported when a module is first set up:
  importing transformers costs seconds (and pulls in torch where installed),
  which importing this file should not."""
  from transformers.models.bert import modeling_flax_bert  # pylint: disable=g-import-not-at-top
  from transformers.models.vit import modeling_flax_vit  # pylint: disable=g-import-not-at-top
  return modeling_flax_bert, modeling_flax_vit


def _vit_config(cfg: VLConfig):
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.ViTConfig(hidden_size=cfg.hidden_size, image_size=cfg.image_size,
                                patch_size=cfg.patch_size, num_channels=cfg.num_channels,
                                initializer_range=cfg.initializer_range)


# ------------------------------------------------------------------ modules


@flax.struct.dataclass
class VLOutput:
  """What the student returns; T = num_text + image tokens (0 without image)."""
  last_hidden_state: jax.Array        # [B, T, H]
  pooled: jax.Array                   # [B, H]
  attention_mask: jax.Array           # [B, T] int32, 1 = a real token
  hidden_states: tuple | None         # num_layers + 1 of [B, T, H] (embeddings first)
  attentions: tuple | None            # num_layers of [B, heads, T, T] (rows: queries)
  num_text: int = flax.struct.field(pytree_node=False, default=0)


class ImageEmbeddings(nn.Module):
  """[CLS]-like token + patch (or projected feature) tokens + positions, LayerNorm."""
  config: VLConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    init = jax.nn.initializers.normal(c.initializer_range)
    if c.image_input == "pixels":
      # ViT's own module, so that its weights load by name and shape.
      self.patch_embeddings = _hf()[1].FlaxViTPatchEmbeddings(_vit_config(c), dtype=self.dtype)
    else:
      self.feature_projection = nn.Dense(c.hidden_size, dtype=self.dtype, kernel_init=init)
    self.cls_token = self.param("cls_token", init, (1, 1, c.hidden_size))
    self.position_embeddings = self.param("position_embeddings", init,
                                          (1, c.num_image_tokens, c.hidden_size))
    # BERT's layers are post-LN: each expects normalised input, as its text
    # embeddings are; ViT's patch tokens are not (ViT is pre-LN).
    self.LayerNorm = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype)
    self.dropout = nn.Dropout(rate=c.hidden_dropout_prob)

  def tokens(self, image):
    """[B, 1 + T, H] before LayerNorm (= FlaxViTEmbeddings' output for pixels)."""
    c = self.config
    if c.image_input == "pixels":
      want = (c.image_size, c.image_size, c.num_channels)
      if image.ndim != 4 or tuple(image.shape[1:]) != want:
        raise UserError(f"the student takes NHWC images of {want}; got shape "
                        f"{tuple(image.shape)}. Resize to config.student.image_size.")
      x = self.patch_embeddings(image)
    else:
      if image.ndim != 3 or image.shape[-1] != c.image_feature_dim or (
          image.shape[1] > c.max_image_tokens):
        raise UserError(f"the student takes image features [B, T <= {c.max_image_tokens}, "
                        f"{c.image_feature_dim}]; got shape {tuple(image.shape)}. Set "
                        "config.student.image_feature_dim / max_image_tokens to fit.")
      x = self.feature_projection(image)
    cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    return x + self.position_embeddings[:, :x.shape[1]].astype(x.dtype)

  def __call__(self, image, deterministic: bool = True):
    return self.dropout(self.LayerNorm(self.tokens(image)), deterministic=deterministic)


class VLStudent(nn.Module):
  """Text and image tokens through one BERT encoder; see the module docstring."""
  config: VLConfig

  def setup(self):
    c = self.config
    dtype = params_lib.compute_dtype(c.dtype)
    bert, hf_bert = bert_config(c), _hf()[0]
    self.embeddings = hf_bert.FlaxBertEmbeddings(bert, dtype=dtype)
    self.image_embeddings = ImageEmbeddings(c, dtype=dtype)
    # Zeros: with BERT's weights and the image masked out, the student is
    # exactly BERT on the text at the start (tested); training moves them.
    self.modality_embeddings = nn.Embed(2, c.hidden_size, dtype=dtype,
                                        embedding_init=nn.initializers.zeros)
    self.encoder = hf_bert.FlaxBertEncoder(bert, dtype=dtype)
    self.pooler = hf_bert.FlaxBertPooler(bert, dtype=dtype)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, image=None,
               image_mask=None, *, deterministic: bool = True,
               output_hidden_states: bool = False, output_attentions: bool = False) -> VLOutput:
    """The student on a batch.

    Args:
      input_ids: [B, L] int token ids, [CLS] first.
      attention_mask: [B, L], 1 on real tokens (default all).
      token_type_ids: [B, L] BERT segments (default 0).
      image: [B, S, S, C] pixels, or [B, T, D_img] features; None: text only.
      image_mask: [B, T] over the patch/feature tokens (default all); the
        [CLS]-like image token is masked where a row's mask is all 0 (no image).
      deterministic: False applies dropout (needs a "dropout" rng).
    Returns:
      VLOutput over [text ; image] tokens.
    """
    c = self.config
    b, length = input_ids.shape
    if length > c.max_position_embeddings:
      raise UserError(f"{length} text tokens, but the student has "
                      f"max_position_embeddings={c.max_position_embeddings}; truncate the "
                      "text or raise config.student.max_position_embeddings.")
    attention_mask = (jnp.ones((b, length), jnp.int32) if attention_mask is None
                      else attention_mask.astype(jnp.int32))
    token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    x = self.embeddings(input_ids, token_type_ids, positions, attention_mask,
                        deterministic=deterministic)
    x = x + self.modality_embeddings(jnp.zeros((b, length), jnp.int32))
    mask = attention_mask
    if image is not None:
      v = self.image_embeddings(image, deterministic=deterministic)
      v = v + self.modality_embeddings(jnp.ones(v.shape[:2], jnp.int32))
      image_mask = (jnp.ones((b, v.shape[1] - 1), jnp.int32) if image_mask is None
                    else image_mask.astype(jnp.int32))
      image_mask = jnp.concatenate([image_mask.max(axis=1, keepdims=True), image_mask], 1)
      x = jnp.concatenate([x, v.astype(x.dtype)], axis=1)
      mask = jnp.concatenate([attention_mask, image_mask], axis=1)
    out = self.encoder(x, mask, None, deterministic=deterministic,
                       output_attentions=output_attentions,
                       output_hidden_states=output_hidden_states, return_dict=True)
    h = out.last_hidden_state
    return VLOutput(last_hidden_state=h, pooled=self.pooler(h), attention_mask=mask,
                    hidden_states=out.hidden_states, attentions=out.attentions,
                    num_text=length)


def encode(module: VLStudent, params, input_ids, attention_mask=None, token_type_ids=None,
           image=None, image_mask=None, *, train: bool = False, rng=None,
           output_hidden_states: bool = False, output_attentions: bool = False) -> VLOutput:
  """`module` applied to `params`; train=True applies dropout with `rng`."""
  if train and rng is None:
    raise ValueError("train=True applies dropout and needs an rng")
  return module.apply({"params": params}, input_ids, attention_mask, token_type_ids, image,
                      image_mask, deterministic=not train,
                      output_hidden_states=output_hidden_states,
                      output_attentions=output_attentions,
                      rngs={"dropout": rng} if train else {})


# --------------------------------------------------------------- parameters


def param_shapes(cfg: VLConfig):
  """The parameter tree as `jax.ShapeDtypeStruct`s (traced, nothing computed)."""
  module = VLStudent(cfg)
  if cfg.image_input == "pixels":
    image = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels))
  else:
    image = jnp.zeros((1, cfg.max_image_tokens, cfg.image_feature_dim))
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, image=image))["params"]


def init_params(cfg: VLConfig, seed: int = 0) -> dict:
  """Random parameters: BERT's init (N(0, initializer_range) weights and
  embeddings, zero biases, unit LayerNorm scales), zero modality embeddings.

  Filled in numpy from the shapes, as `params_lib.random_params` does: a
  traced `init` would compile the whole network first.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    if name.endswith("scale"):
      return np.ones(leaf.shape, np.float32)
    if name.endswith("bias") or name.startswith("modality_embeddings"):
      return np.zeros(leaf.shape, np.float32)
    return (rng.standard_normal(leaf.shape) * cfg.initializer_range).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, param_shapes(cfg))


def build(cfg: VLConfig, seed: int = 0) -> tuple[VLStudent, dict]:
  """(module, random params) of a config."""
  return VLStudent(check(cfg)), init_params(cfg, seed)


def param_rules(axis: str = "model", min_size: int = 2**18) -> sharding.Rules:
  """FSDP rules for `sharding.param_shardings` / `state_shardings`: every
  weight of >= 2 dims and >= `min_size` elements split over mesh axis `axis`.

  The default `min_size` (1 MiB of float32) is below `sharding.FSDP`'s so
  that BERT-base's attention kernels (768 x 768 = 0.6M) are split too, not
  only its MLP kernels and word embeddings; norms and biases stay whole.
  """
  return sharding.fsdp_rules(axis, min_size)
