"""What every recipe in models/ shares: the optimiser group and the `fit` call."""

from __future__ import annotations

import os

import jax

from zoomshot_jax import training
from zoomshot_jax.configs import common as config_common

# The world's colours sit around these; normalising with them is ours.
WORLD_MEAN, WORLD_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def fit(name: str, loss_fn, params, model_state, batches, cfg, mesh, workdir: str):
  """cfg.steps steps of `loss_fn` with AdamW (β2 0.98, cosine after warm-up),
  resuming from <workdir>/checkpoints; returns host (params, model_state)."""
  tx = training.make_optimizer(config_common.optimizer(
      learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      weight_decay=cfg.weight_decay, b2=0.98), cfg.steps)
  state = training.fit(loss_fn, params, {}, batches, cfg.steps, tx, mesh,
                       os.path.join(workdir, "checkpoints"), batch_size=cfg.batch_size,
                       model_state=model_state, seed=cfg.seed,
                       checkpoint_every=cfg.checkpoint_every, keep=1,
                       log_every=cfg.log_every, metadata=cfg.to_dict(), name=f"train {name}",
                       logdir=workdir)
  return jax.device_get(state["params"]), jax.device_get(state["model_state"])
