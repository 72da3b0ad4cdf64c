r"""Text-to-Concept (METHODS.md §1), the baseline Zoom-shot is measured against.

  python -m zoomshot_jax.main --config=configs/text_to_concept.py:dinov2_b14,b32 \
      --workdir=DIR

Variant words as configs/zoomshot.py (vision encoder, CLIP), plus a solver:
  reference    the reference recipe: SGD lr 0.01, momentum 0.9, weight decay
               5e-4, batch 100, 5 epochs, 20% of ImageNet train (default);
  closed_form  the exact optimum of the same objective in one pass (ours).
"""

import importlib.util
import os

import ml_collections


def _load_sibling(name):
  """configs/<name>.py, wherever this file is loaded from (not a package)."""
  spec = importlib.util.spec_from_file_location(
      f"zoomshot_configs_{name}", os.path.join(os.path.dirname(__file__), f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


zoomshot = _load_sibling("zoomshot")

SOLVERS = {"reference": "sgd", "closed_form": "closed_form"}


def get_config(arg=None):
  words = zoomshot.parse_words(arg, {"vision": zoomshot.VISION, "clip": zoomshot.CLIPS,
                                     "solver": SOLVERS})
  config = zoomshot.get_config(",".join(w for k, w in words.items() if k != "solver"))
  config.method = "text_to_concept"
  config.solver = SOLVERS[words.get("solver", "reference")]
  config.loss = ml_collections.ConfigDict({"mse": 1.0})
  config.train_fraction = 0.2
  config.epochs = 5
  config.batch_size = 100
  config.optimizer = ml_collections.ConfigDict({
      "name": "sgd", "learning_rate": 0.01, "schedule": "constant", "warmup_steps": 0,
      "weight_decay": 5e-4, "momentum": 0.9, "b1": 0.9, "b2": 0.999, "eps": 1e-8})
  return config
