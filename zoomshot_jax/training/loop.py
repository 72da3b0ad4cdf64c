"""Training the maps: a pure jitted step, the batch order, and the loop.

The state {"params", "opt_state", "step"} is replicated (the maps are at most
~1M parameters; replicating them costs less than any collective to shard
them), batches are split over every mesh axis, and the state is donated so
that XLA updates it in place. Frozen encoders (online mode) are an argument
of the step, never part of the state: no gradient, no optimizer state.

Batch order is a function of (seed, epoch) alone: a run resumed from step k
sees exactly the batches an uninterrupted run sees from step k.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow as tf
import orbax.checkpoint as ocp
from absl import logging

from zoomshot_jax import sharding
from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation.zeroshot import replicate
from zoomshot_jax.methods import linear, losses


class TrainingDiverged(UserError):
  """A loss term became NaN/Inf; training stopped, the last good checkpoint kept."""


@dataclasses.dataclass(frozen=True)
class Objective:
  """Everything about the loss that is not an array (static under jit)."""

  method: str                  # "text_to_concept" | "zoomshot"
  weights: tuple               # ((term, weight), ...)
  paired: bool = True
  pgkd_mode: str = "kl"
  tau: float = 1.0
  logit_scale: float = 100.0
  class_norm: float = 1.0      # RMS norm of aligned CLIP image features
  text_batch: int = 256        # prompt embeddings per step for the text cycle
  seed: int = 0

  def terms(self, params: dict, v: jax.Array, c: jax.Array, consts: dict, step) -> dict:
    """Unweighted loss terms for aligned features v [B, m], c [B, d]."""
    if self.method == "text_to_concept":
      return losses.text_to_concept_terms(params, v, c)
    text = consts["text"]
    if self.text_batch < text.shape[0]:
      # A fresh sample of prompts each step, a function of the step alone
      # (so resumed runs draw the same ones).
      key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
      text = text[jax.random.randint(key, (self.text_batch,), 0, text.shape[0])]
    return losses.zoomshot_terms(params, v, c, text, consts["classes"], self.logit_scale,
                                 self.class_norm, self.tau, self.pgkd_mode, self.paired)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW (ours, default) or the reference's SGD with coupled weight decay."""
  if cfg.schedule == "cosine":
    if cfg.warmup_steps:
      lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                              max(total_steps, cfg.warmup_steps + 1))
    else:
      lr = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps, 1))
  elif cfg.schedule == "constant":
    lr = cfg.learning_rate
  else:
    raise UserError(f"config.optimizer.schedule={cfg.schedule!r}: expected 'cosine' or "
                    "'constant'.")
  if cfg.name == "adamw":
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if cfg.name == "sgd":
    # PyTorch's SGD(weight_decay=wd): g + wd * p before momentum (the reference).
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(lr, momentum=cfg.momentum or None))
  raise UserError(f"config.optimizer.name={cfg.name!r}: expected 'adamw' or 'sgd'.")


def init_state(params: dict, tx: optax.GradientTransformation) -> dict:
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_train_step(objective: Objective, tx, mesh, features: Callable):
  """The jitted step: (state, frozen, batch, consts) -> (state, metrics).

  Args:
    features: (frozen, batch) -> aligned (v [B, m], c [B, d]); a cast for
      cached features, the frozen encoders for online mode.
  """
  rows, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  weights = dict(objective.weights)

  @functools.partial(jax.jit, in_shardings=(rep, rep, rows, rep), out_shardings=(rep, rep),
                     donate_argnums=(0,))
  def step(state, frozen, batch, consts):
    v, c = features(frozen, batch)

    def loss_fn(params):
      terms = objective.terms(params, v, c, consts, state["step"])
      return losses.weighted_total(terms, weights), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "step": state["step"] + 1}
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    # A non-finite step leaves the state as it was: the loop stops at its
    # next check, and what it saves or returns is the last good state.
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = {**terms, "loss": loss, "finite": finite}
    return new, metrics

  return step


class CachedBatches:
  """Global batches of cached features in a per-epoch seeded order.

  Every host holds all rows (features are small next to images) and feeds
  its contiguous share of each global batch. With paired=False the CLIP side
  follows an independent permutation, so no row pairs the same image.
  """

  def __init__(self, vision: np.ndarray, clip: np.ndarray, batch_size: int, seed: int,
               paired: bool, mesh):
    self.vision, self.clip = vision, clip
    self.batch_size, self.seed, self.paired = batch_size, seed, paired
    self.steps_per_epoch = len(vision) // batch_size
    if self.steps_per_epoch == 0:
      raise UserError(f"config.batch_size={batch_size} is larger than the {len(vision)} "
                      "cached training examples; lower it or raise config.train_fraction.")
    self._rows = sharding.batch_sharding(mesh)
    self._lo, self._hi = sharding.contiguous_rows(batch_size, jax.process_index(),
                                                  jax.process_count())
    self._orders = {}

  def _order(self, epoch: int, side: int) -> np.ndarray:
    key = (epoch, side)
    if key not in self._orders:
      self._orders = {k: v for k, v in self._orders.items() if k[0] >= epoch}
      self._orders[key] = np.random.default_rng([self.seed, epoch, side]).permutation(
          len(self.vision))
    return self._orders[key]

  def rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Global row indices (vision side, CLIP side) of batch `step`."""
    epoch, i = divmod(step, self.steps_per_epoch)
    sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
    v = self._order(epoch, 0)[sl]
    return v, (v if self.paired else self._order(epoch, 1)[sl])

  def __call__(self, step: int) -> dict:
    v_rows, c_rows = self.rows(step)
    local = {"vision": self.vision[v_rows[self._lo:self._hi]],
             "clip": self.clip[c_rows[self._lo:self._hi]]}
    return sharding.to_global(local, self._rows)


class OnlineBatches:
  """Global image batches for online mode: both views, a seeded shuffle per epoch.

  tf.data order is deterministic for a seed, so batch `step` is found by
  skipping within its epoch (a resumed run re-reads, but does not re-encode,
  the skipped part of the epoch).
  """

  def __init__(self, source, vision, clip, batch_size: int, seed: int, paired: bool,
               augment: bool, mesh):
    from zoomshot_jax import data  # pylint: disable=g-import-not-at-top
    self._data, self._source = data, source
    self._views = {"vision": vision.preprocess, "clip": clip.preprocess}
    self._local_bs = sharding.local_batch_size(batch_size, mesh)
    self._seed, self._paired, self._augment = seed, paired, augment
    pi, pc = jax.process_index(), jax.process_count()
    n_local = source.host_shard(pi, pc)[1]
    # Hosts must run the same number of steps: the smallest share decides.
    self.steps_per_epoch = -sharding.host_max(-(n_local // self._local_bs))
    if self.steps_per_epoch <= 0:
      raise UserError(f"config.batch_size={batch_size} is larger than the training subset "
                      f"({n_local} images on this host); lower it or raise train_fraction.")
    self._rows = sharding.batch_sharding(mesh)
    self._it, self._next = None, None

  def _epoch(self, epoch: int, skip: int):
    pi, pc = jax.process_index(), jax.process_count()

    def batches(views, side):
      return self._data.train_batches(self._source, views, self._local_bs,
                                      self._seed * 7919 + epoch * 2 + side, pi, pc,
                                      augment=self._augment)

    if self._paired:
      ds = batches(self._views, 0)
    else:  # independent shuffles: no row pairs the same image
      ds = tf.data.Dataset.zip(batches({"vision": self._views["vision"]}, 0),
                               batches({"clip": self._views["clip"]}, 1))
      ds = ds.map(lambda a, b: {"vision": a["vision"], "clip": b["clip"]})
    return self._data.as_numpy(ds.skip(skip), f"training images of {self._source.name!r}")

  def __call__(self, step: int) -> dict:
    epoch, i = divmod(step, self.steps_per_epoch)
    if self._next != step:
      self._it = self._epoch(epoch, i)
    batch = next(self._it)
    self._next = step + 1 if i + 1 < self.steps_per_epoch else None
    return sharding.to_global({"vision": batch["vision"], "clip": batch["clip"]}, self._rows)


def cached_features(vision_scale: float, clip_scale: float):
  def features(frozen, batch):
    del frozen
    return (batch["vision"].astype(jnp.float32) * vision_scale,
            batch["clip"].astype(jnp.float32) * clip_scale)
  return features


def online_features(vision, clip, vision_scale: float, clip_scale: float):
  """Features computed inside the step from uint8 images of both views."""
  def features(frozen, batch):
    return (vision.image_features(frozen["vision"], batch["vision"]) * vision_scale,
            clip.image_features(frozen["clip"], batch["clip"]) * clip_scale)
  return features


def _mean_metrics(pending: list[dict]) -> dict:
  host = jax.device_get(pending)
  keys = [k for k in host[0] if k != "finite"]
  return {k: float(np.mean([m[k] for m in host])) for k in keys}


def check_finite(pending: list[tuple[int, dict]], last_good: int | None, directory: str):
  """Raises TrainingDiverged at the first non-finite step among `pending`."""
  flags = jax.device_get([m["finite"] for _, m in pending])
  for (step, metrics), ok in zip(pending, flags):
    if not ok:
      values = jax.device_get(metrics)
      bad = [k for k, v in values.items() if k not in ("finite", "loss")
             and not np.isfinite(v)] or ["the gradient"]
      raise TrainingDiverged(
          f"training diverged at step {step}: loss term {bad[0]!r} is "
          f"{values.get(bad[0], 'NaN/Inf')}. Stopped; the last good checkpoint is "
          f"{'step ' + str(last_good) if last_good is not None else 'none'} in {directory}. "
          "Lower config.optimizer.learning_rate or that term's weight, or check the "
          "features for NaN/Inf (float16 caches overflow above 65504).")


def train(step_fn, state, frozen, consts, batches: Callable[[int], dict], total_steps: int,
          mngr, writer, log_every: int, batch_size: int,
          evaluate: Callable[[dict], dict] | None = None, eval_every: int = 0,
          hooks: Sequence[Callable[[int], None]] = ()):
  """Runs steps from `state["step"]` to `total_steps`; returns the final state.

  Saves through `mngr` (Orbax, async) every `mngr`'s interval and at the
  end; logs each loss term, throughput and ETA every `log_every` steps; runs
  `evaluate(params)` (held-out metrics) every `eval_every` steps.
  `hooks(step)` run after each step (tests use one to simulate a crash).
  """
  start_step = int(jax.device_get(state["step"]))
  pending: list[tuple[int, dict]] = []
  t0 = t_log = time.time()
  steps_at_log = start_step
  for step in range(start_step, total_steps):
    state, metrics = step_fn(state, frozen, batches(step), consts)
    pending.append((step + 1, metrics))
    if len(pending) > 2:
      # At most two steps in flight: enough to hide dispatch and the next
      # batch's host work, and it bounds the queue (on CPU, a long queue of
      # collectives can starve XLA's thread pool).
      pending[-3][1]["loss"].block_until_ready()
    done = step + 1
    last = done == total_steps
    if done % log_every == 0 or last:
      check_finite(pending, mngr.latest_step(), str(mngr.directory))
      means = _mean_metrics([m for _, m in pending])
      now = time.time()
      rate = (done - steps_at_log) * batch_size / max(now - t_log, 1e-9)
      eta = (total_steps - done) * (now - t0) / max(done - start_step, 1)
      writer.write_scalars(done, {**{f"train/{k}": v for k, v in means.items()},
                                  "train/samples_per_s": rate})
      logging.info("step %d/%d: %s | %.0f samples/s, ETA %.0fs", done, total_steps,
                   " ".join(f"{k}={v:.4g}" for k, v in means.items()), rate, eta)
      pending, t_log, steps_at_log = [], now, done
    if mngr.should_save(done) or last:
      check_finite(pending, mngr.latest_step(), str(mngr.directory))
      mngr.save(done, args=ocp.args.StandardSave(state), force=last)
    if evaluate is not None and ((eval_every and done % eval_every == 0) or last):
      scalars = evaluate(state["params"])
      writer.write_scalars(done, scalars)
      logging.info("step %d held-out: %s", done,
                   " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
    for hook in hooks:
      hook(done)
  mngr.wait_until_finished()
  writer.flush()
  return state


def heldout_evaluator(vision: np.ndarray, clip: np.ndarray, vision_scale: float,
                      clip_scale: float, classes: np.ndarray, logit_scale: float, mesh):
  """params -> {"heldout/r2": R² of h, "heldout/agreement": top-1 agreement}.

  R² of h(c_v V) against c_I I over every entry (scale-free); agreement is
  the fraction of held-out images whose mapped-encoder zero-shot class equals
  CLIP's own, on the training dataset's classes.
  """
  n_dev = mesh.devices.size
  n = len(vision)
  pad = (-n) % n_dev
  mask = np.arange(n + pad) < n
  rows, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  lo, hi = sharding.contiguous_rows(n + pad, jax.process_index(), jax.process_count())

  def padded(x):
    return np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])[lo:hi]

  g = sharding.to_global({"v": padded(vision), "c": padded(clip), "m": mask[lo:hi]}, rows)
  w = replicate(np.asarray(classes, np.float32), mesh)

  @functools.partial(jax.jit, in_shardings=(rep, rows, rows, rows, rep), out_shardings=rep)
  def sums(params, v, c, m, w):
    v = v.astype(jnp.float32) * vision_scale
    c = c.astype(jnp.float32) * clip_scale
    hv = linear.apply(params["h"], v)
    s = linear.r2_sums(hv, c, m)
    agree = jnp.argmax(losses.cosine_logits(hv, w, logit_scale), -1) == \
        jnp.argmax(losses.cosine_logits(c, w, logit_scale), -1)
    s["agree"] = jnp.sum(agree & m)
    return s

  def evaluate(params) -> dict:
    s = jax.device_get(sums(params, g["v"], g["c"], g["m"], w))
    return {"heldout/r2": linear.r2_from_sums(s),
            "heldout/agreement": float(s["agree"]) / float(s["n"])}

  return evaluate
