"""Meshes, shardings and multi-host plumbing, stated once for every binary.

The same code runs on one CPU, 8 fake CPU devices, a GPU and a TPU pod: a mesh
is built from the config (`[("data", -1)]` by default), batches are sharded
over all mesh axes, and host-local numpy batches become global arrays with
`jax.make_array_from_process_local_data` (`to_global`). Rows come back with
`local_rows` per step and `gather_rows` at the end (all hosts, padding dropped);
`pad_to_mesh` pads a host's rows for a mesh.

Parameters are replicated unless sharding rules say otherwise. A rule set is an
ordered list of `(regex, spec)`: the regex is searched in the '/'-joined path
of a parameter (`"Dense_0/kernel"`), the first match wins, and no match means
replicated. `spec` is a `PartitionSpec`, or a function `(shape, mesh) ->
PartitionSpec` for rules that depend on the shape (FSDP). A mesh axis that does
not divide its dimension is dropped from that dimension (it stays replicated).
The config names a set (`rules_from_config("fsdp")`); a step then uses it as

  rules = sharding.rules_from_config("fsdp")          # mesh [("data", 2), ("model", 4)]
  state = {"params": params, "opt_state": tx.init(params), "step": 0}
  state_sh = sharding.state_shardings(state, mesh, rules)
  step = jax.jit(step_fn, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  state = sharding.place(state, state_sh)

`state_shardings` maps the rules over the whole state: optax keeps adam's mu/nu
in the params' tree (`opt_state/0/mu/Dense_0/kernel`), so each leaf takes the
rule that matches its path or, trying longer suffixes first, one of its
suffixes (`Dense_0/kernel`; rules anchored with `^` match there); scalars
(adam's count, the step) are replicated. XLA adds the collectives (typically
an all-gather of a sharded weight where it is used, a reduce-scatter of its
gradient).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

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


def place(tree, shardings):
  """Host-identical values -> global arrays; `shardings`: one, or a pytree like `tree`.

  Every host passes the same values and fills its own devices, so this works
  multi-host, where `jax.device_put` of host data may not. Arrays that already
  have their sharding are kept as they are (e.g. parameters placed once for
  several datasets, or a state restored by Orbax). An array on the same
  devices under another sharding object (on one device: a SingleDeviceSharding
  against a one-device mesh's) gets `s` itself, without a copy: a jitted step
  keys its compilations on its inputs' shardings, and the outputs carry `s`,
  so such an input made every one-device training program compile its step
  twice (4.5 s of a VL run's 9 s of compiling).
  """
  def one(x, s):
    if isinstance(x, jax.Array):
      if x.sharding == s:
        return x
      if x.sharding.is_equivalent_to(s, x.ndim) or not x.is_fully_addressable:
        return jax.device_put(x, s)  # the same buffers, or a reshard on device
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), tree)
  return jax.tree.map(one, tree, shardings)


def replicate(tree, mesh: Mesh):
  """Places a host-identical pytree on every device of a (multi-host) mesh."""
  return place(tree, replicated(mesh))


def fetch_global(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-host) global array, on every host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


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
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


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


def gather_to_all_hosts(tree):
  """Stacks each host's equally-shaped arrays: leaves [num_processes, *x.shape]."""
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: np.asarray(x)[None], tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(
      jax.tree.map(np.asarray, tree)))


def _local_share(mesh: Mesh) -> int:
  """How many of `mesh`'s devices are this host's (its rows split over them)."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def pad_to_mesh(host_batch, mesh: Mesh):
  """Pads this host's rows so that every host holds the same multiple of its
  devices in `mesh` (every host must call it: the row count is agreed).

  Args:
    host_batch: a pytree of arrays with the same number of rows [n, ...].
  Returns:
    (padded batch [rows, ...], mask [rows] bool: True on the n real rows).
    Padding repeats the last row (a valid input, so no NaN from e.g. an
    empty attention mask), or is zeros when there is no row.
  """
  leaves = jax.tree.leaves(host_batch)
  n = len(leaves[0]) if leaves else 0
  if any(len(x) != n for x in leaves):
    raise ValueError(f"rows differ between arrays: {[len(x) for x in leaves]}")
  share = _local_share(mesh)
  rows = -(-host_max(n) // share) * share

  def pad(x):
    x = np.asarray(x)
    if n:
      return np.concatenate([x, np.repeat(x[-1:], rows - n, axis=0)])
    return np.zeros((rows,) + x.shape[1:], x.dtype)

  return jax.tree.map(pad, host_batch), np.arange(rows) < n


def gather_rows(local_arrays, mask):
  """Every host's rows, in host order, padding dropped; the same on all hosts.

  Hosts hold contiguous shares of a global batch in process order (as
  `batch_sharding` and `contiguous_rows` lay them out), so stacking the hosts'
  rows and dropping padding restores the global order.

  Args:
    local_arrays: a pytree of this host's rows [n, ...] (e.g. `local_rows` of
      each step's output, concatenated); n and shapes equal on every host.
    mask: [n] bool, True on real rows.
  Returns:
    The pytree with leaves [total real rows, ...].
  """
  mask = np.asarray(mask, bool).reshape(-1)
  for x in jax.tree.leaves(local_arrays):
    if len(x) != len(mask):
      raise ValueError(f"an array has {len(x)} rows, the mask {len(mask)}")
  stacked, keep = gather_to_all_hosts((local_arrays, mask))
  keep = keep.reshape(-1)
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[keep], stacked)


# ------------------------------------------------------- parameter shardings

SpecFn = Callable[[tuple[int, ...], Mesh], P]
Rules = Sequence[tuple[str, "P | SpecFn"]]


def _path_str(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str) -> P:
  """`spec` with each mesh axis that does not divide its dimension dropped."""
  if len(spec) > len(shape):
    raise UserError(f"parameter {name!r} of shape {shape} got the sharding {spec} with "
                    f"{len(spec)} dimensions; write its rule for {len(shape)} dimensions "
                    "or make the regex not match it.")
  out = []
  for dim, axes in zip(shape, spec):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    missing = [a for a in names if a not in mesh.shape]
    if missing:
      raise UserError(f"parameter {name!r}: its sharding {spec} names mesh axes {missing}, "
                      f"but config.mesh has axes {tuple(mesh.axis_names)}.")
    size = int(np.prod([mesh.shape[a] for a in names]))
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def _spec(names: Sequence[str], shape: tuple[int, ...], mesh: Mesh, rules: Rules) -> P:
  """The spec of the first rule whose regex is found in one of `names`
  (tried in order, each against all rules); replicated if none is."""
  for name in names:
    for regex, spec in rules:
      if re.search(regex, name):
        spec = spec(shape, mesh) if callable(spec) else spec
        return _fit(spec, shape, mesh, names[0])
  return P()


def param_shardings(params, mesh: Mesh, rules: Rules):
  """A pytree of `NamedSharding` matching `params` (arrays or shape structs):
  the first rule whose regex is found in a parameter's '/'-joined path wins."""
  def one(path, x):
    return NamedSharding(mesh, _spec([_path_str(path)], np.shape(x), mesh, rules))

  return jax.tree_util.tree_map_with_path(one, params)


def state_shardings(state, mesh: Mesh, rules: Rules):
  """`param_shardings` for a training state whose leaves' paths end in
  parameter paths (optimizer moments: `opt_state/0/mu/<param path>`).

  A leaf's path is matched first whole, then by ever shorter suffixes (split
  at '/'), so that rules written for parameter paths, `^`-anchored ones
  included, give a moment its parameter's sharding. Scalars (counts, the step)
  are replicated.
  """
  def one(path, x):
    shape = np.shape(x)
    if not shape:
      return replicated(mesh)
    parts = _path_str(path).split("/")
    suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
    return NamedSharding(mesh, _spec(suffixes, shape, mesh, rules))

  return jax.tree_util.tree_map_with_path(one, state)


def fsdp_rules(axis: str = "model", min_size: int = 2**20) -> Rules:
  """Rules that shard each weight of >= 2 dims and >= `min_size` elements over
  mesh axis `axis`, along its largest dimension that the axis size divides
  (the first such, on ties); other parameters stay replicated.

  The default `min_size` (4 MiB of float32, as openpi's `fsdp_sharding`) keeps
  biases and small weights whole: gathering them costs more than they save.
  """
  def spec(shape: tuple[int, ...], mesh: Mesh) -> P:
    if axis not in mesh.shape:
      raise UserError(f"FSDP parameter sharding splits weights over the mesh axis {axis!r}, "
                      f"but config.mesh has axes {tuple(mesh.axis_names)}; use e.g. "
                      f"config.mesh=[('data', -1), ({axis!r}, 4)].")
    if len(shape) < 2 or int(np.prod(shape)) < min_size:
      return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[dim] % mesh.shape[axis] == 0:
        return P(*(axis if d == dim else None for d in range(len(shape))))
    return P()

  return ((r".*", spec),)


REPLICATED: Rules = ()
FSDP: Rules = fsdp_rules()
RULE_SETS = {"replicated": REPLICATED, "fsdp": FSDP}


def rules_from_config(name: str, field: str = "param_sharding") -> Rules:
  """The named rule set `config.<field>` picks: one of `RULE_SETS`."""
  if name not in RULE_SETS:
    raise UserError(f"config.{field}={name!r} is not a parameter sharding; choose one of "
                    f"{sorted(RULE_SETS)}.")
  return RULE_SETS[name]
