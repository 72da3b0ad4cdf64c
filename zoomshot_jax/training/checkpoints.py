"""Orbax checkpoints of the training state, with resume checks.

The state is a plain pytree {"params", "model_state", "opt_state", "step"}; saves are
asynchronous (training goes on while the previous step's state is written),
every `every` steps and at the end, keeping the last `keep`. Orbax writes a
step to a temporary directory and renames it when complete, so a run killed
mid-save resumes from the last whole checkpoint.
"""

from __future__ import annotations

import copy
import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from zoomshot_jax.errors import UserError


def _single_host_saves() -> None:
  """Orbax's jax.Array handler without replica-parallel saving on one host.

  Replica-parallel (Orbax's default off GPU) splits every replicated array
  into one slice per replica so that the hosts holding the replicas share the
  writing. On one host the one process writes every slice anyway, and each
  slice is a device program compiled for that array's shape: the micro demo
  compiled 211 programs with it and 131 without (80 slices, a few seconds of
  each model's first save on a CPU). The checkpoint's contents are the same.
  Multi-host runs keep Orbax's default.
  """
  if jax.process_count() > 1:
    return
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(handler, "_use_replica_parallel", False):
    single = copy.copy(handler)  # the same array-metadata store and options
    single._use_replica_parallel = False  # pylint: disable=protected-access
    ocp.type_handlers.register_type_handler(jax.Array, single, override=True)


def manager(directory: str, every: int, keep: int, config: dict) -> ocp.CheckpointManager:
  _single_host_saves()
  # Orbax's default policy also saves a fresh run's first step
  # (InitialSavePolicy): a full state nobody asked for, at step 1 of every
  # run. Ours: every `every` steps (and on preemption); fit() saves the last.
  policies = ocp.checkpoint_managers
  policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(max(1, every)),
                                   policies.PreemptionCheckpointingPolicy()])
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=policy, max_to_keep=keep,
      enable_async_checkpointing=True, cleanup_tmp_directories=True)
  # The config travels with the checkpoints (Orbax's root metadata).
  return ocp.CheckpointManager(os.path.abspath(directory) if "://" not in directory
                               else directory, options=options, metadata=config,
                               item_handlers=ocp.StandardCheckpointHandler())


def _shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): tuple(getattr(x, "shape", ())) for p, x in flat}


def restore_latest(mngr: ocp.CheckpointManager, state):
  """(state restored from the latest step, that step), or (state, 0) if none.

  `state` gives the expected structure, shapes and shardings; a checkpoint of
  other shapes (e.g. other encoders' dims) is refused, not half-loaded.
  """
  step = mngr.latest_step()
  if step is None:
    return state, 0
  # The parameters' shapes say which model (and, for maps, which encoders)
  # made the checkpoint; the optimizer state mirrors them.
  found = _shapes(mngr.item_metadata(step)["params"])
  expected = _shapes(state["params"])
  if found != expected:
    diffs = [f"{k}: checkpoint {found.get(k)}, config {v}" for k, v in expected.items()
             if found.get(k) != v]
    diffs += [f"{k}: only in the checkpoint" for k in found if k not in expected]
    raise UserError(
        f"checkpoint {mngr.directory}/{step} does not fit this config "
        f"(params {'; '.join(diffs[:4])}). It was trained with another model, other "
        "encoders or dims; use a new workdir, or the config it was made with (config.json "
        "beside it).")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(
        f"checkpoint {mngr.directory}/{step} has the same parameters but another optimizer "
        f"state ({str(e).splitlines()[0][:200]}); was config.optimizer changed? Use a new "
        "workdir, or the config it was made with (config.json beside it).") from e
  logging.info("Resumed from %s at step %d.", mngr.directory, step)
  return restored, int(step)

