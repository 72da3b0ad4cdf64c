"""The one train step every method uses: a pure, jitted, sharding-explicit update.

A method supplies only its loss (STYLE.md, "a method is an init, a loss and a
config"):

  loss_fn(params, model_state, batch, frozen, rng) -> (loss, (metrics, model_state))

  params       the trainable pytree (the optimiser sees only this)
  model_state  non-trained state that the forward pass updates (ResNet batch
               statistics); `{}` for most methods
  batch        this step's global batch (sharded over the mesh's batch axes)
  frozen       constants: frozen encoders' weights, prompt embeddings, class
               vectors. An argument, never part of the state, so they get no
               gradient and no optimiser state, and a checkpoint does not hold
               them
  rng          `fold_in(PRNGKey(seed), step)`: a function of the step alone, so
               a resumed run draws what an uninterrupted one draws
  metrics      scalars to log (each unweighted loss term, accuracies); a
               non-finite one is named when training diverges

The state is `{"params", "model_state", "opt_state", "step"}`, donated so XLA
updates it in place. A step whose loss or gradient is not finite leaves the
state as it was (the loop then stops and names the step and the term).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from zoomshot_jax import sharding

LossFn = Callable[..., tuple[jax.Array, tuple[dict, dict]]]


def init_state(params, tx: optax.GradientTransformation, model_state=None) -> dict:
  """The training state at step 0 (host values; place it with `sharding.replicate`
  or the shardings of `sharding.state_shardings`)."""
  return {"params": params, "model_state": {} if model_state is None else model_state,
          "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, mesh, *, seed: int = 0,
              state_sharding=None, batch_sharding=None, frozen_sharding=None):
  """The jitted step `(state, batch, frozen) -> (state, metrics)`.

  Args:
    state_sharding: a sharding (or a pytree of them, e.g. from
      `sharding.state_shardings` for FSDP rules) for the state; default
      replicated.
    batch_sharding: default: leading axis over every mesh axis.
    frozen_sharding: default replicated.
  """
  rep = sharding.replicated(mesh)
  state_sharding = rep if state_sharding is None else state_sharding
  batch_sharding = sharding.batch_sharding(mesh) if batch_sharding is None else batch_sharding
  frozen_sharding = rep if frozen_sharding is None else frozen_sharding
  key = jax.random.PRNGKey(seed)

  def step(state, batch, frozen):
    rng = jax.random.fold_in(key, state["step"])
    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["model_state"], batch, frozen, rng)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates),
           "model_state": model_state, "opt_state": opt_state, "step": state["step"] + 1}
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
    # A non-finite step leaves the state as it was: the loop stops at its
    # next check, and what it saves or returns is the last good state.
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return new, {**metrics, "loss": loss, "finite": finite}

  return jax.jit(step, in_shardings=(state_sharding, batch_sharding, frozen_sharding),
                 out_shardings=(state_sharding, rep), donate_argnums=(0,))
