"""The demo world's "text-to-image model": prompt -> scene -> clean render.

Feature distillation trains on images a text-to-image model made from
prompts (METHODS.md §4). Here the synthetic-data toolkit's prompt builder
combines the world's attributes (size, background, position, rotation)
pairwise for each of the 64 classes, and each prompt is rendered by the
clean renderer — the synthetic domain; the photo world's `test` plays the
real images. Written as images/<class>/<prompt>_<k>.png with
captions/<class>/<prompt>_<k>.txt beside them (the reference's layout), read
back as a `folder:` dataset like a real generator's output.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from zoomshot_jax import io_utils
from zoomshot_jax.synthetic import prompts as prompt_builder
from zoomshot_jax.world import render

POSITIONS = {"in the centre": (0.5, 0.5), "in the top left": (0.3, 0.3),
             "in the top right": (0.7, 0.3), "in the bottom left": (0.3, 0.7),
             "in the bottom right": (0.7, 0.7)}
ROTATIONS = {"upright": 0.0, "tilted left": np.pi / 6, "tilted right": -np.pi / 6,
             "upside down": np.pi}
ATTRIBUTES = {
    "template": "a {size} {cls} on a {background} background, {position}, {rotation}",
    "attributes": {"size": list(render.SIZES), "background": list(render.BACKGROUNDS),
                   "position": list(POSITIONS), "rotation": list(ROTATIONS)},
}


def prompts() -> list[dict]:
  """The prompt builder's rows for the world's 64 classes."""
  return prompt_builder.build(ATTRIBUTES, render.class_names(), where="demo world")


def image(row: dict, k: int, seed: int, image_size: int) -> np.ndarray:
  """Image k of a prompt row: a function of (seed, class, prompt, k) only."""
  label = render.class_names().index(row["class"])
  rng = np.random.default_rng([seed, 7, label, row["index"], k])
  a = row["attributes"]
  x, y = POSITIONS[a["position"]]
  scene = render.one_object_scene(
      rng, label, render.SIZES.index(a["size"]), render.BACKGROUNDS.index(a["background"]),
      x, y, ROTATIONS[a["rotation"]] + rng.normal(0, 0.15))
  return render.render(scene, "clean", image_size, rng)


def write(root: str, per_prompt: int, seed: int, image_size: int) -> str:
  """Writes <root>/images, <root>/captions and <root>/prompts.jsonl (once:
  an existing complete root is kept); returns the images folder."""
  images = os.path.join(root, "images")
  if os.path.exists(os.path.join(root, "prompts.jsonl")):
    return images
  rows = prompts()

  def fill(d):
    for row in rows:
      cls = row["class"].replace(" ", "_")
      for sub in ("images", "captions"):
        os.makedirs(os.path.join(d, sub, cls), exist_ok=True)
      for k in range(per_prompt):
        name = f"{row['index']:03d}_{k}"
        Image.fromarray(image(row, k, seed, image_size)).save(
            os.path.join(d, "images", cls, name + ".png"))
        with open(os.path.join(d, "captions", cls, name + ".txt"), "w") as f:
          f.write(row["prompt"] + "\n")
    prompt_builder.write_jsonl(os.path.join(d, "prompts.jsonl"), rows)

  io_utils.atomic_write_dir(root, fill)
  return images
