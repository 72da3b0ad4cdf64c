"""The demo's shipped models: checkpoints trained once, longer than a first
run can afford, by `launch/train_demo_models.py`, and installed with the package.

  shipped/manifest.json   what each model is, how it was trained (recipe,
                          steps, world, duration, command) and the sha256 of
                          each of its files
  shipped/clip/           the tiny CLIP (save_pretrained format)
  shipped/vision_<renderer>/  the tiny ResNet of each renderer's world

`config.models="shipped"` (the full-scale default) loads them, after checking
every fingerprint; `"retrain"` trains both models in the workdir instead
(config.clip / config.vision are that recipe).
"""

from __future__ import annotations

import hashlib
import os

from zoomshot_jax import io_utils
from zoomshot_jax.errors import UserError

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped")
MANIFEST = "manifest.json"
SOURCES = ("shipped", "retrain")


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def fingerprints(model_dir: str) -> dict[str, str]:
  """{file name: sha256} of every file of a saved model."""
  return {f: sha256(os.path.join(model_dir, f)) for f in sorted(os.listdir(model_dir))
          if os.path.isfile(os.path.join(model_dir, f))}


def manifest(root: str = DIR) -> dict:
  path = os.path.join(root, MANIFEST)
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist: this installation has no shipped demo models. "
                    "Reinstall the package (`pip install -e .`), or add "
                    "--config.models=retrain to train them here.")
  return io_utils.read_json(path)


def verify(name: str, root: str = DIR) -> str:
  """The directory of shipped model `name` ("clip", "vision_clean", ...), after
  checking its files against the manifest's fingerprints."""
  entries = manifest(root)["models"]
  if name not in entries:
    raise UserError(f"No shipped demo model {name!r} (shipped: {sorted(entries)}); add "
                    "--config.models=retrain to train it here.")
  model_dir = os.path.join(root, name)
  want = entries[name]["files"]
  have = fingerprints(model_dir) if os.path.isdir(model_dir) else {}
  for f, digest in want.items():
    if have.get(f) != digest:
      why = "is missing" if f not in have else "does not match its sha256 in the manifest"
      raise UserError(f"The shipped demo model file {os.path.join(model_dir, f)} {why}: the "
                      "installation is damaged. Reinstall the package, or add "
                      "--config.models=retrain to train the models here.")
  return model_dir
