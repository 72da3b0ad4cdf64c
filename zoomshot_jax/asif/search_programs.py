"""The jitted programs of ASIF's search (relative.py has the layout and the
reasons): per query chunk, each device's similarity blocks (`sims_program`,
for the host top-k on CPU devices) or its local top-k (`search_program`),
then the collective merge over the anchor axis (`gather_program`) and the
running merge of a stream (`merge_program`).

Module-level and cached by their static arguments (a mesh is hashable), so
every Searcher on the same mesh and shapes reuses one compilation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "anchors"
QUERY_AXIS = "queries"
ROWS = P((QUERY_AXIS, AXIS))  # row-sharded over every device

# XLA:CPU's older loop emitters for the masks around the dots: the same bits
# and run time (measured at 10k and 100k anchors a device), and a new
# process compiles its two search programs in 0.11-0.12 s instead of
# 0.18-0.21 s (20k anchors x 1k queries, 2 CPU devices; the newer emitters
# build their MLIR pipeline on first use). At that size the whole
# pipeline's first call is about 0.6 s, so this is a seventh of it.
_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def _jit(fn, mesh: Mesh, **kwargs):
  cpu = mesh.devices.flat[0].platform == "cpu"
  return jax.jit(fn, compiler_options=_CPU_OPTIONS if cpu else None, **kwargs)


def _local_sims(q, a, offset, limit, starts, local_rows: int, block: int):
  """This device's similarities [rows, L] to its anchors, masked at -inf.

  q [Qc / Q, d] (this query group's rows), a [L, d] (this device's anchors,
  the first of global index starts[0]; it owns those from offset + j L on),
  L >= block. Every similarity comes from a dot of one shape, [rows, d] x
  [d, block], wherever its block starts: when L is not a multiple of the
  block, the last block starts at L - block and recomputes some of the one
  before it (the same values).
  """
  start = starts[0]
  own = offset + jax.lax.axis_index(AXIS) * local_rows  # this device's first anchor
  num_blocks = -(-local_rows // block)

  def body(i, buf):
    at = jnp.minimum(i * block, local_rows - block)
    blk = jax.lax.dynamic_slice_in_dim(a, at, block)
    s = jnp.einsum("qd,nd->qn", q, blk, precision=jax.lax.Precision.HIGHEST)
    # Rows that are padding, or another device's anchors, are never
    # selected; masked here, while the block is hot in cache (a pass over
    # the whole buffer costs ~15% of a step).
    gidx = start + at + jnp.arange(block, dtype=jnp.int32)
    s = jnp.where((gidx[None, :] >= own) & (gidx[None, :] < limit), s, -jnp.inf)
    return jax.lax.dynamic_update_slice_in_dim(buf, s, at, axis=1)

  # Blocks wholly outside the device's own anchors are not computed (a
  # chunk's last device may hold mostly padding, or rows before its own):
  # they keep the buffer's -inf.
  first = jnp.clip((own - start) // block, 0, num_blocks)
  blocks = jnp.clip((limit - start + block - 1) // block, 0, num_blocks)
  sims = jax.lax.fori_loop(first, blocks, body,
                           jnp.full((q.shape[0], local_rows), -jnp.inf, jnp.float32))
  return sims, start


_IN_SPECS = (P(QUERY_AXIS), P(AXIS), P(), P(), P(AXIS))
_BLOCKS = P(QUERY_AXIS, AXIS)  # [Qc, A * x]: rows by query group, columns by anchor device


@functools.lru_cache(maxsize=None)
def search_program(mesh: Mesh, local_rows: int, block: int, k_local: int):
  """Program 1 (top_k="xla"): each device's top-min(k, L) candidates,
  [Qc, A * k_local], rows split over the query axis, columns over the anchor axis."""

  def local(q, a, offset, limit, starts):
    sims, start = _local_sims(q, a, offset, limit, starts, local_rows, block)
    vals, pos = jax.lax.top_k(sims, k_local)
    return vals, start + pos

  return _jit(jax.shard_map(local, mesh=mesh, in_specs=_IN_SPECS,
                            out_specs=(_BLOCKS, _BLOCKS), check_vma=False), mesh)


@functools.lru_cache(maxsize=None)
def sims_program(mesh: Mesh, local_rows: int, block: int):
  """Program 1 (top_k="host"): the similarities themselves, [Qc, A * L]."""

  def local(q, a, offset, limit, starts):
    return _local_sims(q, a, offset, limit, starts, local_rows, block)[0]

  return _jit(jax.shard_map(local, mesh=mesh, in_specs=_IN_SPECS, out_specs=_BLOCKS,
                            check_vma=False), mesh)


@functools.lru_cache(maxsize=None)
def gather_program(mesh: Mesh, k: int):
  """Program 2: candidates by columns -> the global top-k, sharded by rows.

  A program of its own: on XLA:CPU a collective in the same program as the
  dots and top_k made the step several times slower.
  """

  def merge(vals, idx):
    # Rows split over the anchor devices, candidates concatenated in device
    # order, i.e. in ascending anchor order (see the module docstring on ties).
    vals = jax.lax.all_to_all(vals, AXIS, 0, 1, tiled=True)
    idx = jax.lax.all_to_all(idx, AXIS, 0, 1, tiled=True)
    if vals.shape[1] < k:  # a chunk of fewer than k anchors: fill with non-anchors
      vals = jnp.pad(vals, ((0, 0), (0, k - vals.shape[1])), constant_values=-jnp.inf)
      idx = jnp.pad(idx, ((0, 0), (0, k - idx.shape[1])), constant_values=-1)
    vals, pos = jax.lax.top_k(vals, k)
    return vals, jnp.take_along_axis(idx, pos, axis=1)

  return _jit(jax.shard_map(merge, mesh=mesh, in_specs=P(QUERY_AXIS, AXIS),
                            out_specs=ROWS, check_vma=False), mesh)


@functools.lru_cache(maxsize=None)
def merge_program(mesh: Mesh, k: int):
  """Running top-k (carry: lower anchor indices) + a chunk's top-k -> top-k."""

  def merge(a_vals, a_idx, b_vals, b_idx):
    vals, pos = jax.lax.top_k(jnp.concatenate([a_vals, b_vals], axis=1), k)
    return vals, jnp.take_along_axis(jnp.concatenate([a_idx, b_idx], axis=1), pos, axis=1)

  rows = NamedSharding(mesh, ROWS)
  return _jit(merge, mesh, in_shardings=rows, out_shardings=rows)
