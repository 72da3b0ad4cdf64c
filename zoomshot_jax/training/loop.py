"""The one training loop: steps, Orbax resume, logging with ETA, divergence stop.

`fit` is what a method's program calls: it builds the optimiser state, resumes
from the latest checkpoint in `directory` (refusing one that does not fit),
runs `train`, and returns the final state. Nothing here names a method: the
loss comes in through `step.make_step`, the batches through a callable
`batches(step) -> global batch` (see `batches.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers

from zoomshot_jax import console, sharding
from zoomshot_jax.errors import UserError
from zoomshot_jax.training import checkpoints
from zoomshot_jax.training.step import LossFn, init_state, make_step


class TrainingDiverged(UserError):
  """A loss term became NaN/Inf; training stopped, the last good checkpoint kept."""


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
          "inputs for NaN/Inf (float16 caches overflow above 65504).")


def train(step_fn, state, frozen, batches: Callable[[int], dict], total_steps: int,
          mngr, writer, log_every: int, batch_size: int,
          evaluate: Callable[[dict], dict] | None = None, eval_every: int = 0,
          hooks: Sequence[Callable[[int], None]] = (), name: str = "train"):
  """Runs steps from `state["step"]` to `total_steps`; returns the final state.

  Saves through `mngr` (Orbax, async) at its interval and at the end; logs
  each metric, throughput and ETA every `log_every` steps; runs
  `evaluate(params)` (held-out metrics) every `eval_every` steps and at the
  end. `hooks(step)` run after each step (tests use one to simulate a crash).
  """
  start_step = int(jax.device_get(state["step"]))
  pending: list[tuple[int, dict]] = []
  t0 = t_log = time.time()
  steps_at_log = start_step
  for step in range(start_step, total_steps):
    state, metrics = step_fn(state, batches(step), frozen)
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
      console.progress(name, done, total_steps, eta,
                       f"loss {means['loss']:.4g}, {rate:.0f} samples/s")
      logging.info("%s step %d/%d: %s | %.0f samples/s, ETA %.0fs", name, done, total_steps,
                   " ".join(f"{k}={v:.4g}" for k, v in means.items()), rate, eta)
      pending, t_log, steps_at_log = [], now, done
    if mngr.should_save(done) or last:
      check_finite(pending, mngr.latest_step(), str(mngr.directory))
      mngr.save(done, args=ocp.args.StandardSave(state), force=last)
    if evaluate is not None and ((eval_every and done % eval_every == 0) or last):
      scalars = evaluate(state["params"])
      writer.write_scalars(done, scalars)
      logging.info("%s step %d held-out: %s", name, done,
                   " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
    for hook in hooks:
      hook(done)
  mngr.wait_until_finished()
  writer.flush()
  return state


def fit(loss_fn: LossFn, params, frozen, batches: Callable[[int], dict], total_steps: int,
        tx: optax.GradientTransformation, mesh, directory: str, *, batch_size: int,
        model_state=None, seed: int = 0, checkpoint_every: int = 1000, keep: int = 3,
        log_every: int = 100, metadata: dict | None = None,
        evaluate: Callable[[dict], dict] | None = None, eval_every: int = 0,
        hooks: Sequence[Callable[[int], None]] = (), state_rules=None, name: str = "train",
        logdir: str | None = None) -> dict:
  """Trains `params` on `loss_fn` for `total_steps` steps, resuming from `directory`.

  Args:
    frozen: constants of the step (frozen encoders, prompt embeddings);
      placed replicated once here.
    directory: Orbax checkpoints (the config in `metadata` travels with
      them); a checkpoint of other shapes is refused before anything is
      overwritten.
    state_rules: parameter sharding rules (`sharding.rules_from_config`);
      default: everything replicated.
    logdir: TensorBoard scalars (default: beside the checkpoints).
  Returns:
    The final state {"params", "model_state", "opt_state", "step"} (on device).
  """
  state = init_state(params, tx, model_state)
  state_sharding = (sharding.state_shardings(state, mesh, state_rules) if state_rules
                    else sharding.replicated(mesh))
  state = sharding.place(state, state_sharding)
  mngr = checkpoints.manager(directory, checkpoint_every, keep, metadata or {})
  state, start = checkpoints.restore_latest(mngr, state)
  state = sharding.place(state, state_sharding)
  writer = metric_writers.create_default_writer(logdir or directory,
                                                just_logging=jax.process_index() > 0)
  logging.info("%s: %d steps of %d, from step %d.", name, total_steps, batch_size, start)
  step_fn = make_step(loss_fn, tx, mesh, seed=seed, state_sharding=state_sharding)
  try:
    return train(step_fn, state, sharding.replicate(frozen, mesh), batches, total_steps,
                 mngr, writer, log_every, batch_size, evaluate, eval_every, hooks, name)
  finally:
    mngr.close()
