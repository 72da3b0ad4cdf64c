"""The demo world's two miniature models, trained from scratch.

  clip    an HF FlaxCLIPModel (ViT image tower, word-level text tower)
          trained contrastively on the captioned split;
  vision  an HF FlaxResNetModel trained without any text: multi-label
          attribute presence (which shapes, which colours are in the
          image), a label set that is not the 64-way evaluation task.

Both are written with `save_pretrained` (weights, config, tokenizer,
preprocessor_config.json), so every later stage loads them through the same
encoder registry as real checkpoints. Training reuses the library's loop:
jitted steps with explicit shardings over the data mesh, Orbax checkpoints
(a killed run resumes), loss and ETA in the log.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from zoomshot_jax import encoders, sharding
from zoomshot_jax.demo.tokenizer import save_word_tokenizer
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.testing import write_preprocessor
from zoomshot_jax.evaluation.zeroshot import replicate
from zoomshot_jax.training import checkpoints, loop

# The world's colours sit around these; normalising with them is ours.
_MEAN, _STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _make_step(loss_fn, tx, mesh):
  """(state, batch) -> (state, metrics), jitted over the data mesh.

  `loss_fn(params, extra, batch) -> (loss, (metrics, new_extra))`; `extra`
  holds non-trained state (ResNet batch statistics). A non-finite step is
  not applied (the loop then stops and names it).
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)

  def step(state, frozen, batch, consts):
    del frozen, consts
    (loss, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["extra"], batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "extra": extra, "step": state["step"] + 1}
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return new, {"loss": loss, **metrics, "finite": finite}

  return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=0)


def _fit(name: str, loss_fn, params, extra, batches, cfg: ml_collections.ConfigDict,
         mesh, workdir: str):
  """Runs cfg.steps steps of `loss_fn` with AdamW; resumes from workdir."""
  tx = loop.make_optimizer(ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": cfg.learning_rate, "schedule": "cosine",
      "warmup_steps": cfg.warmup_steps, "weight_decay": cfg.weight_decay, "b1": 0.9,
      "b2": 0.98, "eps": 1e-8}), cfg.steps)
  state = {"params": params, "opt_state": tx.init(params), "extra": extra,
           "step": jnp.zeros((), jnp.int32)}
  state = replicate(state, mesh)
  mngr = checkpoints.manager(os.path.join(workdir, "checkpoints"), cfg.checkpoint_every, 1,
                             cfg.to_dict())
  state, start = checkpoints.restore_latest(mngr, state)
  state = replicate(state, mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  logging.info("Training the demo %s: %d steps of %d, from step %d.", name, cfg.steps,
               cfg.batch_size, start)
  state = loop.train(_make_step(loss_fn, tx, mesh), state, None, None, batches, cfg.steps,
                     mngr, writer, cfg.log_every, cfg.batch_size)
  mngr.close()
  return jax.device_get(state["params"]), jax.device_get(state["extra"])


def _sampler(n: int, batch_size: int, seed: int, mesh, make_batch):
  """batches(step): a seeded permutation per epoch, this host's rows only."""
  sh = sharding.batch_sharding(mesh)
  rows = slice(*sharding.contiguous_rows(batch_size, jax.process_index(), jax.process_count()))

  def batches(step):
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    idx = order[i * batch_size:(i + 1) * batch_size][rows]
    return sharding.to_global(make_batch(idx, np.random.default_rng([seed, step, 1])), sh)

  return batches


def _save_atomically(out_dir: str, write) -> str:
  """Calls write(tmp_dir), then renames it to out_dir: never a half model."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
  try:
    write(tmp)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


# ------------------------------------------------------------------- CLIP


def clip_model(cfg: ml_collections.ConfigDict, vocab_size: int, image_size: int):
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


def _write_clip(path: str, model, params, words: list[str], max_length: int, image_size: int):
  model.save_pretrained(path, params=params)
  save_word_tokenizer(path, words, max_length)
  write_preprocessor(path, "CLIPImageProcessor", image_size,
                     size={"shortest_edge": image_size},
                     crop_size={"height": image_size, "width": image_size},
                     do_center_crop=True, image_mean=list(_MEAN), image_std=list(_STD))


def train_clip(cfg: ml_collections.ConfigDict, images: np.ndarray, captions: np.ndarray,
               words: list[str], out_dir: str, workdir: str, mesh) -> str:
  """Trains the tiny CLIP on (image, caption) pairs; writes it to out_dir.

  Args:
    images: uint8 [N, S, S, 3].
    captions: str [N, C]: C phrasings per image ("" = none); each step picks
      one at random per image.
  """
  image_size = images.shape[1]
  # The untrained model, written and read back through the library's loader:
  # the tokenizer, preprocessing and pure feature functions are the ones
  # every later stage uses.
  model = clip_model(cfg, len(words) + 4, image_size)
  init_dir = os.path.join(workdir, "init")
  if not os.path.exists(os.path.join(init_dir, "tokenizer.json")):
    _save_atomically(init_dir, lambda d: _write_clip(
        d, model, params_lib.random_params(model, cfg.seed), words, cfg.max_length,
        image_size))
  clip = encoders.load_clip(init_dir)
  ids, mask = _tokenize_all(clip, captions)

  def make_batch(idx, rng):
    # One phrasing per image among the non-empty ones.
    counts = (mask[idx, :, 0] > 0).sum(1)
    pick = (rng.random(len(idx)) * counts).astype(int)
    return {"image": images[idx], "input_ids": ids[idx, pick], "attention_mask": mask[idx, pick]}

  def loss_fn(params, extra, batch):
    img = clip.image_features(params, batch["image"])
    txt = clip.text_features(params, batch["input_ids"], batch["attention_mask"])
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    # CLIP's learned temperature, clipped at 100 as in the paper.
    scale = jnp.exp(jnp.minimum(params["logit_scale"], jnp.log(100.0)))
    logits = scale * img @ txt.T
    labels = jnp.arange(logits.shape[0])
    loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
    acc = (logits.argmax(-1) == labels).mean()
    return loss, ({"batch_top1": acc, "logit_scale": scale}, extra)

  batches = _sampler(len(images), cfg.batch_size, cfg.seed, mesh, make_batch)
  params, _ = _fit("CLIP", loss_fn, clip.params, {}, batches, cfg, mesh, workdir)
  params["logit_scale"] = np.minimum(params["logit_scale"], np.log(100.0))
  return _save_atomically(out_dir, lambda d: _write_clip(d, model, params, words,
                                                         cfg.max_length, image_size))


def _tokenize_all(clip, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and masks [N, C, L] for every caption, padded to the model's length."""
  n, c = captions.shape
  enc = clip.tokenize([str(s) for s in captions.reshape(-1)], pad_to=clip.max_length)
  mask = enc["attention_mask"].reshape(n, c, -1)
  mask[captions == ""] = 0  # not a caption: never picked
  return enc["input_ids"].reshape(n, c, -1), mask


# ----------------------------------------------------------------- vision


def vision_model(cfg: ml_collections.ConfigDict):
  from transformers import FlaxResNetModel, ResNetConfig  # pylint: disable=g-import-not-at-top

  config = ResNetConfig(embedding_size=cfg.widths[0], hidden_sizes=list(cfg.widths),
                        depths=list(cfg.depths), layer_type="basic",
                        downsample_in_first_stage=False)
  return FlaxResNetModel(config, _do_init=False)


def _write_vision(path: str, model, variables, image_size: int):
  model.save_pretrained(path, params=variables)
  # An exact resize (no crop): objects may touch the border.
  write_preprocessor(path, "ViTImageProcessor", image_size, image_mean=list(_MEAN),
                     image_std=list(_STD))


def train_vision(cfg: ml_collections.ConfigDict, images: np.ndarray, targets: np.ndarray,
                 out_dir: str, workdir: str, mesh) -> str:
  """Trains the tiny ResNet on multi-hot attribute targets [N, T]; writes it to out_dir.

  The linear head is dropped; the saved encoder's pooled features are what
  Zoom-shot maps.
  """
  image_size = images.shape[1]
  model = vision_model(cfg)
  init_dir = os.path.join(workdir, "init")
  if not os.path.exists(os.path.join(init_dir, "config.json")):
    _save_atomically(init_dir, lambda d: _write_vision(
        d, model, params_lib.random_params(model, cfg.seed), image_size))
  enc = encoders.load_vision_encoder("resnet", init_dir, "pooler")
  rng = np.random.default_rng(cfg.seed)
  head = {"kernel": (rng.standard_normal((enc.dim, targets.shape[1])) / np.sqrt(enc.dim)
                     ).astype(np.float32), "bias": np.zeros(targets.shape[1], np.float32)}
  params = {"encoder": enc.variables["params"], "head": head}
  extra = {"batch_stats": enc.variables["batch_stats"]}
  targets = targets.astype(np.float32)

  def make_batch(idx, rng):
    del rng
    return {"image": images[idx], "targets": targets[idx]}

  def loss_fn(params, extra, batch):
    x = enc.preprocess.normalize(batch["image"])
    out, updates = model.module.apply(
        {"params": params["encoder"], "batch_stats": extra["batch_stats"]}, x,
        deterministic=False, mutable=["batch_stats"])
    feats = out.pooler_output.reshape(x.shape[0], -1)
    logits = feats @ params["head"]["kernel"] + params["head"]["bias"]
    loss = optax.sigmoid_binary_cross_entropy(logits, batch["targets"]).mean()
    exact = ((logits > 0) == (batch["targets"] > 0.5)).all(-1).mean()
    return loss, ({"exact_match": exact}, {"batch_stats": updates["batch_stats"]})

  batches = _sampler(len(images), cfg.batch_size, cfg.seed, mesh, make_batch)
  params, extra = _fit("vision encoder", loss_fn, params, extra, batches, cfg, mesh, workdir)
  variables = {"params": params["encoder"], "batch_stats": extra["batch_stats"]}
  return _save_atomically(out_dir, lambda d: _write_vision(d, model, variables, image_size))
