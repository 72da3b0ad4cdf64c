"""The demo world's miniature vision encoder: an HF FlaxResNetModel trained without text.

Trained on multi-label attribute presence (which shapes, which colours an
image contains): a label set that is not the 64-way evaluation task. The
linear head is dropped at the end; the saved encoder's pooled features are
what Zoom-shot maps.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import optax

from zoomshot_jax import encoders, io_utils, training
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.testing import write_preprocessor
from zoomshot_jax.models import recipe


def build(cfg: ml_collections.ConfigDict):
  from transformers import FlaxResNetModel, ResNetConfig  # pylint: disable=g-import-not-at-top

  config = ResNetConfig(embedding_size=cfg.widths[0], hidden_sizes=list(cfg.widths),
                        depths=list(cfg.depths), layer_type="basic",
                        downsample_in_first_stage=False)
  return FlaxResNetModel(config, _do_init=False)


def write(path: str, model, variables, image_size: int):
  model.save_pretrained(path, params=variables)
  # An exact resize (no crop): objects may touch the border.
  write_preprocessor(path, "ViTImageProcessor", image_size, image_mean=list(recipe.WORLD_MEAN),
                     image_std=list(recipe.WORLD_STD))


def multilabel_loss_fn(model, preprocess):
  """Sigmoid BCE of a linear head on the pooled features; batch statistics are
  the model state. batch: {"image": uint8 [B, S, S, 3], "targets": [B, T]}."""
  def loss_fn(params, model_state, batch, frozen, rng):
    del frozen, rng
    x = preprocess.normalize(batch["image"])
    out, updates = model.module.apply(
        {"params": params["encoder"], "batch_stats": model_state["batch_stats"]}, x,
        deterministic=False, mutable=["batch_stats"])
    feats = out.pooler_output.reshape(x.shape[0], -1)
    logits = feats @ params["head"]["kernel"] + params["head"]["bias"]
    loss = optax.sigmoid_binary_cross_entropy(logits, batch["targets"]).mean()
    exact = ((logits > 0) == (batch["targets"] > 0.5)).all(-1).mean()
    return loss, ({"exact_match": exact}, {"batch_stats": updates["batch_stats"]})
  return loss_fn


def train(cfg: ml_collections.ConfigDict, images: np.ndarray, targets: np.ndarray,
          out_dir: str, workdir: str, mesh) -> str:
  """Trains the tiny ResNet on multi-hot targets [N, T]; writes it to out_dir."""
  image_size = images.shape[1]
  model = build(cfg)
  init_dir = os.path.join(workdir, "init")
  if not os.path.exists(os.path.join(init_dir, "config.json")):
    io_utils.atomic_write_dir(init_dir, lambda d: write(
        d, model, params_lib.random_params(model, cfg.seed), image_size))
  enc = encoders.load_vision_encoder("resnet", init_dir, "pooler")
  rng = np.random.default_rng(cfg.seed)
  head = {"kernel": (rng.standard_normal((enc.dim, targets.shape[1])) / np.sqrt(enc.dim)
                     ).astype(np.float32), "bias": np.zeros(targets.shape[1], np.float32)}
  params = {"encoder": enc.variables["params"], "head": head}
  batches = training.ArrayBatches({"image": images, "targets": targets.astype(np.float32)},
                                  cfg.batch_size, cfg.seed, mesh, what="images",
                                  field="vision.batch_size")
  params, model_state = recipe.fit("vision encoder", multilabel_loss_fn(model, enc.preprocess),
                                   params, {"batch_stats": enc.variables["batch_stats"]},
                                   batches, cfg, mesh, workdir)
  variables = {"params": params["encoder"], "batch_stats": model_state["batch_stats"]}
  return io_utils.atomic_write_dir(out_dir, lambda d: write(d, model, variables, image_size))
