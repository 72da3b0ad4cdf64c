"""The optimiser factory: one place that turns `config.optimizer` into optax.

Fields (every method's config has the same group):
  name            adamw | sgd
  learning_rate   peak learning rate
  schedule        constant | cosine | warmup_constant (linear warm-up, then
                  constant); cosine warms up linearly first when
                  warmup_steps > 0
  warmup_steps    linear warm-up from 0
  weight_decay    AdamW: decoupled; SGD: PyTorch's coupled `g + wd * p`
  decay_params    all | matrices (only parameters with >= 2 dims decay: no
                  decay on biases, norms' scales or the logit scale)
  momentum        SGD (0 = none); b1, b2, eps: AdamW
"""

from __future__ import annotations

import jax
import optax

from zoomshot_jax.errors import UserError

SCHEDULES = ("constant", "cosine", "warmup_constant")
NAMES = ("adamw", "sgd")
DECAY_PARAMS = ("all", "matrices")


def schedule(cfg, total_steps: int) -> optax.Schedule | float:
  """The learning rate as a function of the step, over `total_steps` steps."""
  lr, warm = cfg.learning_rate, int(cfg.get("warmup_steps", 0))
  if cfg.schedule == "constant":
    return lr
  if cfg.schedule == "warmup_constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warm, 1)),
                                 optax.constant_schedule(lr)], [max(warm, 1)])
  if cfg.schedule == "cosine":
    if warm:
      return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(total_steps, warm + 1))
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  raise UserError(f"config.optimizer.schedule={cfg.schedule!r}: expected one of "
                  f"{list(SCHEDULES)}.")


def _decay_mask(which: str):
  if which == "all":
    return None
  if which == "matrices":
    return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  raise UserError(f"config.optimizer.decay_params={which!r}: expected one of "
                  f"{list(DECAY_PARAMS)}.")


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW, or SGD with PyTorch's coupled weight decay (the T2C reference)."""
  lr = schedule(cfg, total_steps)
  mask = _decay_mask(cfg.get("decay_params", "all"))
  if cfg.name == "adamw":
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=mask)
  if cfg.name == "sgd":
    # PyTorch's SGD(weight_decay=wd): g + wd * p before momentum (the reference).
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                       optax.sgd(lr, momentum=cfg.momentum or None))
  raise UserError(f"config.optimizer.name={cfg.name!r}: expected one of {list(NAMES)}.")
