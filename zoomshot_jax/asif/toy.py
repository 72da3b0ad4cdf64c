r"""Writes tiny random encoders and captioned toy images for ASIF, offline.

  python -m zoomshot_jax.asif.toy --out=/tmp/asif_toy

gives /tmp/asif_toy/{vit,bert} (random tiny checkpoints with their
preprocessing and tokenizer), /tmp/asif_toy/anchors/anchors.tsv (coloured
shapes with captions naming them) and /tmp/asif_toy/images (a folder: dataset
of the same three classes), to run the ASIF binary end to end where no real
weights or data can be downloaded. The encoders are random, so accuracy is
near chance: this checks the machinery, not a model.
"""

import os

from absl import app, flags

from zoomshot_jax.encoders import testing
from zoomshot_jax.tools import toy_assets

# toy_assets' class directories -> words for captions.
WORDS = {"red_square": "red square", "green_circle": "green circle",
         "blue_triangle": "blue triangle"}


def write_anchors(root: str, per_class: int, seed: int) -> str:
  """Captioned images of the toy classes and a TSV listing them (relative paths)."""
  toy_assets.write_image_folder(os.path.join(root, "img"), per_class=per_class, seed=seed)
  lines = ["image\tcaption"]
  for c in sorted(WORDS):
    for i, f in enumerate(sorted(os.listdir(os.path.join(root, "img", c)))):
      lines.append(f"img/{c}/{f}\t{['a', 'a photo of a', 'my'][i % 3]} {WORDS[c]} {i}")
  path = os.path.join(root, "anchors.tsv")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def write_toy(out: str, anchors_per_class: int = 16, seed: int = 0) -> dict[str, str]:
  """Everything the `tiny` config needs, under `out`; returns the paths."""
  return {"vit": testing.save_tiny_vision("vit", os.path.join(out, "vit"), seed=seed + 1),
          "bert": testing.save_tiny_text("bert", os.path.join(out, "bert"), seed=seed + 2),
          "anchors": write_anchors(os.path.join(out, "anchors"), anchors_per_class, seed + 3),
          "images": toy_assets.write_image_folder(os.path.join(out, "images"), 7, seed)}


def main(argv):
  del argv
  paths = write_toy(flags.FLAGS.out)
  print("Wrote " + ", ".join(paths.values()), flush=True)


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Output directory.")
  flags.mark_flag_as_required("out")
  app.run(main)
