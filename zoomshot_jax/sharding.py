"""Meshes, shardings and multi-host plumbing, stated once for every binary.

The same code runs on one CPU, 8 fake CPU devices, a GPU and a TPU pod: a mesh
is built from the config (`[("data", -1)]` by default), batches are sharded
over all mesh axes, parameters are replicated, and host-local numpy batches
become global arrays with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zoomshot_jax.errors import UserError

# Environment variables that switch multi-host on outside Cloud TPU. On a TPU
# pod `jax.distributed.initialize()` finds its peers by itself.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _on_multihost_tpu() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize` when the environment asks for it.

  Multi-host is on when `JAX_COORDINATOR_ADDRESS` is set (then
  `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` must be too), or on a multi-worker
  Cloud TPU slice. Single-host runs never touch the distributed runtime.
  """
  if jax.distributed.is_initialized():
    return
  coordinator = os.environ.get(ENV_COORDINATOR)
  if coordinator:
    try:
      num_processes = int(os.environ[ENV_NUM_PROCESSES])
      process_id = int(os.environ[ENV_PROCESS_ID])
    except (KeyError, ValueError) as e:
      raise UserError(
          f"{ENV_COORDINATOR}={coordinator} is set, so this is a multi-host run, "
          f"but {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be set to integers "
          f"too (got {ENV_NUM_PROCESSES}={os.environ.get(ENV_NUM_PROCESSES)!r}, "
          f"{ENV_PROCESS_ID}={os.environ.get(ENV_PROCESS_ID)!r})."
      ) from e
    # CPU processes need a collectives backend for cross-process reductions;
    # the setting only concerns the CPU client, so it is harmless on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
    )
  elif _on_multihost_tpu():
    jax.distributed.initialize()
  else:
    return
  logging.info(
      "Distributed: process %d of %d, %d local / %d global devices.",
      jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(),
  )


def make_mesh(axes: Sequence[tuple[str, int]], devices=None) -> Mesh:
  """Builds a mesh from `[(axis_name, size), ...]`; one size may be -1 (the rest).

  Args:
    axes: the config's `mesh` field, e.g. `[("data", -1)]`.
    devices: defaults to all global devices.
  """
  devices = jax.devices() if devices is None else list(devices)
  names = [str(name) for name, _ in axes]
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise UserError(f"config.mesh={list(axes)}: at most one axis may have size -1.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(
          f"config.mesh={list(axes)}: {len(devices)} devices are not divisible "
          f"by the fixed axis sizes (product {known})."
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise UserError(
        f"config.mesh={list(axes)} needs {int(np.prod(sizes))} devices, "
        f"but {len(devices)} are available; use -1 for one axis to fill the rest."
    )
  if len(devices) == jax.device_count():
    grid = mesh_utils.create_device_mesh(sizes, devices=devices)
  else:
    grid = np.asarray(devices).reshape(sizes)
  return Mesh(grid, names)


def local_mesh() -> Mesh:
  """A 1-D data mesh over this process's devices only.

  For work every host does on its own (e.g. building a classifier from text),
  with no cross-host collective, so hosts need not agree on when to do it.
  """
  return Mesh(np.asarray(jax.local_devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis; the rest replicated."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> int:
  """This host's share of a global batch; checks that it splits evenly."""
  n_proc = jax.process_count()
  n_dev = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n_dev:
    raise UserError(
        f"config.{field}={global_batch_size} must be a positive multiple of the "
        f"number of devices in the mesh ({n_dev}), e.g. "
        f"--config.{field}={max(1, global_batch_size // n_dev) * n_dev or n_dev}."
    )
  return global_batch_size // n_proc


def contiguous_rows(global_rows: int, process_index: int, process_count: int):
  """[lo, hi) of this host's rows of a global batch: hosts hold equal,
  contiguous shares in process order (as `batch_sharding` lays them out)."""
  share = global_rows // process_count
  return process_index * share, (process_index + 1) * share


def to_global(tree, sharding: NamedSharding):
  """Host-local numpy batch (this host's rows) -> global `jax.Array`s."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      tree,
  )


def local_rows(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array that live on this host, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  rows, seen = [], set()
  for s in shards:
    start = s.index[0].start or 0
    if start in seen:  # replicas along other mesh axes hold the same rows
      continue
    seen.add(start)
    rows.append(np.asarray(s.data))
  return np.concatenate(rows, axis=0)


def host_max(value: int) -> int:
  """The maximum of an integer over all hosts (identity on one host)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def gather_to_all_hosts(x: np.ndarray) -> np.ndarray:
  """Stacks each host's equally-shaped array: [num_processes, *x.shape]."""
  if jax.process_count() == 1:
    return np.asarray(x)[None]
  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))
