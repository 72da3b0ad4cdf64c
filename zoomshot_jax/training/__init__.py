"""The method-free training core (docs/architecture.md).

  step.py         the jitted step builder: loss_fn in, (state, metrics) out
  loop.py         the loop (`train`) and `fit`: resume, logging/ETA, divergence stop
  optim.py        the optimiser factory from `config.optimizer`
  batches.py      seeded, resumable batch sources (in-memory arrays, tf.data images)
  checkpoints.py  Orbax manager and checked restore
  features.py     the frozen-encoder feature cache (stage extract)
"""

from zoomshot_jax.training.batches import ArrayBatches, ImageBatches
from zoomshot_jax.training.loop import TrainingDiverged, check_finite, fit, train
from zoomshot_jax.training.optim import make_optimizer
from zoomshot_jax.training.step import init_state, make_step

__all__ = ["ArrayBatches", "ImageBatches", "TrainingDiverged", "check_finite",
           "fit", "init_state", "make_optimizer", "make_step", "train"]
