r"""Text-to-Concept (METHODS.md §1), the baseline Zoom-shot is measured against.

  python -m zoomshot_jax.main --config=configs/text_to_concept.py:dinov2_b14,b32 \
      --workdir=DIR

Variant words as configs/zoomshot.py (vision encoder, CLIP), plus a solver:
  reference    the reference recipe: SGD lr 0.01, momentum 0.9, weight decay
               5e-4, batch 100, 5 epochs, 20% of ImageNet train (default);
  closed_form  the exact optimum of the same objective in one pass (ours).
"""

import ml_collections

from zoomshot_jax.configs import common, zoomshot

SOLVERS = {"reference": "sgd", "closed_form": "closed_form"}
KINDS = {"vision": common.VISION, "clip": common.CLIPS, "solver": SOLVERS}


def get_config(arg=None):
  words = common.parse_words(arg, KINDS, "configs/text_to_concept.py")
  config = zoomshot.get_config(",".join(w for k, w in words.items() if k != "solver"))
  config.zoomshot.method = "text_to_concept"
  config.zoomshot.solver = SOLVERS[words.get("solver", "reference")]
  config.zoomshot.loss = ml_collections.ConfigDict({"mse": 1.0})
  config.data.train_fraction = 0.2
  config.train.update(epochs=5, batch_size=100)
  config.optimizer = common.optimizer(name="sgd", learning_rate=0.01, schedule="constant",
                                      weight_decay=5e-4, momentum=0.9)
  return config
