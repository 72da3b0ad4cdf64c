r"""Writes a tiny random CLIP checkpoint and a small image folder, offline.

  python -m zoomshot_jax.tools.toy_assets --out=/tmp/zs_toy

gives /tmp/zs_toy/clip (save_pretrained weights, tokenizer, preprocessor
config), /tmp/zs_toy/vit (a tiny vision encoder) and
/tmp/zs_toy/images/<class>/*.png, to run the binaries end to end where no
real weights or data can be downloaded (`configs/zoomshot.py:toy` points at
them). The models are random, so accuracies are chance: this checks the
machinery, not a model.
"""

import os

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from zoomshot_jax.encoders import testing

FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a script: importing write_image_folder must not claim
  # common flag names (--out, --seed) in the importer's absl program.
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_integer("images_per_class", 20, "Images per class.")
  flags.DEFINE_integer("seed", 0, "Seed of the weights and images.")
  flags.mark_flag_as_required("out")

CLASSES = {"red_square": ((220, 30, 30), "square"), "green_circle": ((30, 200, 60), "circle"),
           "blue_triangle": ((40, 60, 220), "triangle")}


def write_image_folder(root: str, per_class: int, seed: int) -> str:
  """Coloured shapes on grey, 48x40 px (not square, to exercise resize+crop)."""
  rng = np.random.default_rng(seed)
  for name, (colour, shape) in CLASSES.items():
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      im = Image.new("RGB", (48, 40), tuple(int(v) for v in rng.integers(60, 160, 3)))
      d = ImageDraw.Draw(im)
      x, y, r = int(rng.integers(12, 36)), int(rng.integers(12, 28)), int(rng.integers(6, 11))
      if shape == "square":
        d.rectangle([x - r, y - r, x + r, y + r], fill=colour)
      elif shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
      else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
      im.save(os.path.join(root, name, f"{i:04d}.png"))
  return root


def main(argv):
  del argv
  testing.save_tiny_clip(os.path.join(FLAGS.out, "clip"), seed=FLAGS.seed)
  testing.save_tiny_vision("vit", os.path.join(FLAGS.out, "vit"), seed=FLAGS.seed + 1)
  write_image_folder(os.path.join(FLAGS.out, "images"), FLAGS.images_per_class, FLAGS.seed)
  print(f"Wrote {FLAGS.out}/clip, {FLAGS.out}/vit and {FLAGS.out}/images", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
