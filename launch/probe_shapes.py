r"""How fast does the demo CLIP's ViT tower learn shape? A supervised 8-shape probe.

  python launch/probe_shapes.py --init=vit --augment --steps=2000

The demo's image tower alone (HF FlaxCLIPVisionModel, width 96, 3 layers,
4 heads, patch 8, 48 px) with a linear head, trained supervised on the 8
shapes of single-object clean world images (--train_images of them, batch
128, AdamW, linear warm-up then cosine), test shape accuracy every
--eval_every steps on 1,000 other images. Used to choose the teacher's
recipe (README, "The teacher's recipe"); issue 15 asked for exactly this
fast signal before spending a full demo run.

  --init=normal  N(0, 0.02) for every kernel (params.random_params; the demo's
                 init before the ViT-style one)
  --init=vit     models.recipe.vit_init on top of it (the demo's now)
  --init=hf      HF Flax's own module initialisers
  --augment      models.tiny_clip.dihedral: random flips and quarter turns
"""

import json
import multiprocessing
import os
import sys
import time

import numpy as np
from absl import app, flags

from bench_util import check_args, usage_error  # launch/, beside this script

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_enum("init", "vit", ["normal", "vit", "hf"], "Initialisation of the tower.")
flags.DEFINE_bool("augment", False, "Random flips and quarter turns of each batch.")
flags.DEFINE_integer("steps", 400, "Training steps.")
flags.DEFINE_integer("eval_every", 400, "Test accuracy every this many steps.")
flags.DEFINE_integer("train_images", 8000, "Training images (fixed set).")
flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate.")
flags.DEFINE_integer("warmup_steps", 50, "Linear warm-up steps.")
flags.DEFINE_integer("patch_size", 8, "ViT patch size.")
FLAGS = flags.FLAGS
SIZE = 48


def _example(i):
  from zoomshot_jax.world import render  # pylint: disable=g-import-not-at-top
  e = render.example(7, 9, i, "clean", SIZE, 0.0, 1)   # seed 7, split id 9: not the demo's
  return e["image"], e["shape"]


def _images(n, offset):
  with multiprocessing.get_context("fork").Pool(2) as pool:
    out = pool.map(_example, range(offset, offset + n), chunksize=256)
  return np.stack([o[0] for o in out]), np.array([o[1] for o in out])


def main(argv):
  check_args(argv, FLAGS, steps=1, eval_every=1, train_images=1, warmup_steps=0, patch_size=1)
  if FLAGS.warmup_steps >= FLAGS.steps:
    raise usage_error(f"--warmup_steps={FLAGS.warmup_steps}: give fewer warm-up steps than "
                      f"--steps={FLAGS.steps}.")
  if not FLAGS.learning_rate > 0:
    raise usage_error(f"--learning_rate={FLAGS.learning_rate}: give a learning rate above 0.")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from transformers import CLIPVisionConfig, FlaxCLIPVisionModel  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders import params as params_lib  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.models import recipe, tiny_clip  # pylint: disable=g-import-not-at-top

  x_train, y_train = _images(FLAGS.train_images, 0)
  x_test, y_test = _images(1000, 100_000)
  config = CLIPVisionConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=3,
                            num_attention_heads=4, image_size=SIZE, patch_size=FLAGS.patch_size)
  if FLAGS.init == "hf":
    model = FlaxCLIPVisionModel(config, seed=0)
    tower = model.params
  else:
    model = FlaxCLIPVisionModel(config, _do_init=False)
    tower = params_lib.random_params(model, seed=0)
    if FLAGS.init == "vit":
      tower = recipe.vit_init(tower, seed=0)
  params = {"tower": tower, "head": {"w": jnp.zeros((96, 8)), "b": jnp.zeros(8)}}
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, FLAGS.learning_rate, FLAGS.warmup_steps, FLAGS.steps), b2=0.98, weight_decay=0.05)
  opt_state = tx.init(params)

  def logits(p, x):
    x = (x.astype(jnp.float32) / 255 - 0.5) / 0.25   # the demo's normalisation
    pooled = model.module.apply({"params": p["tower"]}, x).pooler_output
    return pooled @ p["head"]["w"] + p["head"]["b"]

  @jax.jit
  def step(p, s, x, y):
    loss, g = jax.value_and_grad(
        lambda q: optax.softmax_cross_entropy_with_integer_labels(logits(q, x), y).mean())(p)
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  accuracy = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(logits(p, x), -1) == y))
  rng, t0, log = np.random.default_rng(0), time.time(), []
  for i in range(FLAGS.steps):
    idx = rng.integers(0, len(x_train), 128)
    x = tiny_clip.dihedral(x_train[idx], rng) if FLAGS.augment else x_train[idx]
    params, opt_state, loss = step(params, opt_state, x, y_train[idx])
    if (i + 1) % FLAGS.eval_every == 0 or i + 1 == FLAGS.steps:
      acc = np.mean([float(accuracy(params, x_test[j:j + 500], y_test[j:j + 500]))
                     for j in range(0, 1000, 500)])
      log.append({"step": i + 1, "train_loss": round(float(loss), 3),
                  "test_shape_accuracy": round(float(acc), 4)})
      print(json.dumps(log[-1]), flush=True)
  print(json.dumps({"init": FLAGS.init, "augment": FLAGS.augment, "patch": FLAGS.patch_size,
                    "lr": FLAGS.learning_rate, "log": log, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
  app.run(main)
