"""The demo world's miniature CLIP: an HF FlaxCLIPModel trained contrastively.

ViT image tower and a word-level text tower (`demo.tokenizer`), written with
`save_pretrained` (weights, config, tokenizer, preprocessor_config.json) so
every later stage loads it through `encoders.load_clip` like a hub checkpoint.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from zoomshot_jax import encoders, io_utils, training
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.testing import write_preprocessor
from zoomshot_jax.errors import UserError
from zoomshot_jax.models import recipe


def build(cfg: ml_collections.ConfigDict, vocab_size: int, image_size: int):
  """An untrained FlaxCLIPModel (no params: `_do_init=False`) of cfg's shape."""
  from transformers import CLIPConfig, FlaxCLIPModel  # pylint: disable=g-import-not-at-top

  config = CLIPConfig(
      text_config=dict(vocab_size=vocab_size, hidden_size=cfg.text_width,
                       intermediate_size=4 * cfg.text_width, num_hidden_layers=cfg.text_layers,
                       num_attention_heads=cfg.heads, max_position_embeddings=cfg.max_length,
                       eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2,
                       pad_token_id=0),
      vision_config=dict(hidden_size=cfg.width, intermediate_size=4 * cfg.width,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         image_size=image_size, patch_size=cfg.patch_size),
      projection_dim=cfg.projection_dim)
  return FlaxCLIPModel(config, _do_init=False)


INITS = ("vit", "normal")


def check(cfg) -> None:
  """Refuses a bad config.clip before anything is trained."""
  if cfg.init not in INITS:
    raise UserError(f"config.clip.init={cfg.init!r}: expected one of {list(INITS)}.")


def dihedral(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Each uint8 image [N, S, S, 3] under a random one of the 8 flips/quarter turns."""
  k = rng.integers(0, 8, len(images))
  return np.stack([np.rot90(im[:, ::-1] if t >= 4 else im, t % 4) for im, t in zip(images, k)])


def write(path: str, model, params, words: list[str], max_length: int, image_size: int):
  from zoomshot_jax.demo.tokenizer import save_word_tokenizer  # pylint: disable=g-import-not-at-top
  model.save_pretrained(path, params=params)
  save_word_tokenizer(path, words, max_length)
  write_preprocessor(path, "CLIPImageProcessor", image_size,
                     size={"shortest_edge": image_size},
                     crop_size={"height": image_size, "width": image_size},
                     do_center_crop=True, image_mean=list(recipe.WORLD_MEAN),
                     image_std=list(recipe.WORLD_STD))


def contrastive_loss_fn(clip: encoders.CLIP):
  """CLIP's symmetric InfoNCE over the batch, learned temperature clipped at 100.

  batch: {"image": uint8 [B, S, S, 3], "input_ids", "attention_mask": [B, L]}.
  """
  def loss_fn(params, model_state, batch, frozen, rng):
    del frozen, rng
    img = clip.image_features(params, batch["image"])
    txt = clip.text_features(params, batch["input_ids"], batch["attention_mask"])
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    scale = jnp.exp(jnp.minimum(params["logit_scale"], jnp.log(100.0)))
    logits = scale * img @ txt.T
    labels = jnp.arange(logits.shape[0])
    loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
    acc = (logits.argmax(-1) == labels).mean()
    return loss, ({"batch_top1": acc, "logit_scale": scale}, model_state)
  return loss_fn


def tokenize_all(clip, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and masks [N, C, L] for every caption, padded to the model's length."""
  n, c = captions.shape
  enc = clip.tokenize([str(s) for s in captions.reshape(-1)], pad_to=clip.max_length)
  mask = enc["attention_mask"].reshape(n, c, -1)
  mask[captions == ""] = 0  # not a caption: never picked
  return enc["input_ids"].reshape(n, c, -1), mask


def train(cfg: ml_collections.ConfigDict, images: np.ndarray, captions: np.ndarray,
          words: list[str], out_dir: str, workdir: str, mesh, evaluate=None,
          eval_every: int = 0) -> str:
  """Trains the tiny CLIP on (image, caption) pairs; writes it to out_dir.

  Args:
    images: uint8 [N, S, S, 3].
    captions: str [N, C]: C phrasings per image ("" = none); each step picks
      one at random per image.
    evaluate: None, or `evaluate(clip, params) -> {name: scalar}`, logged
      every `eval_every` steps (monitoring only: the result is the last step).
  """
  check(cfg)
  image_size = images.shape[1]
  # The untrained model, written and read back through the library's loader:
  # the tokenizer, preprocessing and pure feature functions are the ones
  # every later stage uses.
  model = build(cfg, len(words) + 4, image_size)
  init_dir = os.path.join(workdir, "init")
  if not os.path.exists(os.path.join(init_dir, "tokenizer.json")):
    params = params_lib.random_params(model, cfg.seed)
    if cfg.init == "vit":
      params = recipe.vit_init(params, cfg.seed)
    io_utils.atomic_write_dir(init_dir, lambda d: write(d, model, params, words,
                                                         cfg.max_length, image_size))
  clip = encoders.load_clip(init_dir)
  ids, mask = tokenize_all(clip, captions)

  def make_batch(rows, rng):
    # One phrasing per image among the non-empty ones.
    counts = (rows["mask"][:, :, 0] > 0).sum(1)
    pick = (rng.random(len(counts)) * counts).astype(int)
    take = np.arange(len(counts))
    images = dihedral(rows["image"], rng) if cfg.augment else rows["image"]
    return {"image": images, "input_ids": rows["ids"][take, pick],
            "attention_mask": rows["mask"][take, pick]}

  batches = training.ArrayBatches({"image": images, "ids": ids, "mask": mask}, cfg.batch_size,
                                  cfg.seed, mesh, make_batch=make_batch,
                                  what="captioned images", field="clip.batch_size")
  monitor = None if evaluate is None else (lambda p: evaluate(clip, p))
  params, _ = recipe.fit("CLIP", contrastive_loss_fn(clip), clip.params, {}, batches, cfg,
                         mesh, workdir, evaluate=monitor, eval_every=eval_every)
  params["logit_scale"] = np.minimum(params["logit_scale"], np.log(100.0))
  return io_utils.atomic_write_dir(out_dir, lambda d: write(d, model, params, words,
                                                            cfg.max_length, image_size))
