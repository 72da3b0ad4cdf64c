"""ASIF's relative representations: exact top-k similarities to the anchors.

METHODS.md §3: r(y) = topk_k(y · A^T)^p for L2-normalised embeddings. This
module finds the top-k part, `topk_k(y · A^T)`, exactly, with the anchor axis
sharded over devices (and so over hosts); the power and the text-row
normalisation are applied at scoring time (`scoring.py`), so stored top-k rows
stay valid for any p and can be merged when anchors are added.

Layout. The mesh is seen as queries x anchors: a mesh axis named "queries"
(if the config has one) splits query rows, all other axes together split the
anchors. With A devices on the anchor axis, anchors [offset, offset + n) are
one `AnchorChunk`: a [A * L, d] array, anchor-device j holding the contiguous
rows [offset + j L, offset + (j + 1) L) (replicated over the query axis),
L = ceil(n / A) (at least a block; see `Searcher.chunk_rows`); rows past n
are padding and never selected. An in-memory array (`in_memory_chunks`)
is placed without a copy: a device whose rows would run past the array's end
takes its last L rows instead, starting before its own, and masks those
(`AnchorChunk.starts`); the rows past a chunk's end are the next chunk's,
masked. Queries come in chunks of `query_chunk` rows, split over the query
axis.

Per query chunk, two jitted shard_map programs (search_programs.py):
  1. each device computes its similarities in blocks of `block` anchors (one
     dot shape [rows, d] x [d, block] whatever the sharding, chunking or
     offset — a device's last block starts at L - block — so a similarity
     has the same bits in sharded, streamed, incremental and unsharded
     runs), and takes its local top-min(k, L) with `lax.top_k`. On CPU
     devices (top_k="host") each host does this step itself: its BLAS
     computes its devices' similarities on all its cores (host_dots.py, no
     program to compile) and it takes their top-k (host_topk.py: the same
     as `lax.top_k`, bit for bit; XLA:CPU's top_k runs on one thread);
  2. an all_to_all over the anchor axis hands each device 1/A of its query
     rows with all anchor-devices' candidates, in device order = anchor index
     order, and a second `lax.top_k` keeps the global top-k, row-sharded over
     all devices.
Anchors that do not fit in memory are streamed chunk by chunk and merged into
a running top-k (`merge`): candidates are always concatenated in index order.
When the host takes the top-k and every device of the mesh is its own (one
process), it also does program 2's merge and the running merge itself
(`host_topk.local_top_k`, the same bits): no collective, no copy of the
candidates back to the devices, and on CPU devices no program at all.

Why a query axis: with `lax.top_k` (one thread on XLA:CPU) a device per
core on the query axis (anchors replicated, when they fit) uses every core;
on accelerators and across hosts the anchor axis scales memory. (With the
host top-k a CPU host uses all its cores whatever the mesh.)

Ties. `lax.top_k` puts the lower position first among equal values; since
candidate lists are always concatenated in ascending anchor order, every top-k
here keeps, among equal similarities, the lowest anchor indices, in ascending
order: the one total order (value desc, index asc) a brute-force sort gives,
with floats in XLA's total order (+0 above -0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zoomshot_jax import sharding
from zoomshot_jax.asif import host_dots, host_topk
from zoomshot_jax.asif.search_programs import (AXIS, QUERY_AXIS, ROWS, gather_program,
                                               merge_program, search_program, sims_program)
from zoomshot_jax.errors import UserError

TOP_K = ("auto", "host", "xla")


@dataclasses.dataclass
class TopK:
  """Sparse rows: each row's k most similar anchors, exactly.

  sims: [n, k] float32 cosine similarities, descending per row (ties: lower
    anchor index first).
  idx: [n, k] int32 global anchor indices.
  num_anchors: the anchors [0, num_anchors) that were searched.
  """

  sims: np.ndarray
  idx: np.ndarray
  num_anchors: int

  @property
  def k(self) -> int:
    return self.sims.shape[1]


@dataclasses.dataclass
class AnchorChunk:
  """Anchors [offset, offset + n) of one modality on the anchor mesh.

  data: [A * L, d] float32, split over the anchor axis (replicated over the
    query axis).
  starts: [A] int32, the global index of each anchor device's first row.
    Device j is meant for anchors [offset + j L, offset + (j + 1) L); its
    rows are those (and, past the chunk's end, padding or the next anchors,
    masked) or, on the last device of an in-memory array, the array's last
    L rows, starting before offset + j L (the rows before are masked): a
    view of the array either way, where a padded device would be a copy.
  """

  data: jax.Array
  offset: int
  n: int
  starts: np.ndarray

  @property
  def end(self) -> int:
    return self.offset + self.n


def search_mesh(mesh: Mesh) -> Mesh:
  """`mesh` as (queries, anchors): its "queries" axis, if any, and the rest flattened."""
  names = list(mesh.axis_names)
  devices = mesh.devices
  if QUERY_AXIS in names:
    devices = np.moveaxis(devices, names.index(QUERY_AXIS), 0)
  else:
    devices = devices[None]
  return Mesh(devices.reshape(devices.shape[0], -1), (QUERY_AXIS, AXIS))


def _round_up(x: int, m: int) -> int:
  return max(m, math.ceil(x / m) * m)


# XLA:CPU uses a host array in place, with no copy, when it is C-contiguous and
# aligned to this many bytes; else it copies it (200k anchors: 13-34% of a search).
_ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
  """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
  nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
  buf = np.empty(nbytes + _ALIGN, np.uint8)
  start = (-buf.ctypes.data) % _ALIGN
  return buf[start:start + nbytes].view(dtype).reshape(shape)


def aligned(x) -> np.ndarray:
  """x as float32 that a CPU device can use in place: x itself when it
  already is (C-contiguous, 64-byte aligned), else one aligned copy. Arrays
  given to `Searcher.place` this way are not copied again on CPU devices
  (they must then not be modified while in use)."""
  x = np.asarray(x)
  if x.dtype == np.float32 and x.flags.c_contiguous and x.ctypes.data % _ALIGN == 0:
    return x
  out = aligned_empty(x.shape)
  out[...] = x
  return out


def default_block(platform: str) -> int:
  """Anchors per similarity dot when the config leaves it at 0.

  On CPU 1024: XLA:CPU's dots (top_k="xla") run as fast on [rows, d] x
  [d, 1024] as on wider blocks (512 to 8192), and a narrow block recomputes
  less of a device's last, overlapping one (20k anchors, 2 devices, 4096:
  23% of the columns, 0.13 s against 0.105 s); the host dots' narrowest
  product, far past OpenBLAS's small kernels. On accelerators 4096: fewer,
  larger dots per step (not measured here). The block may change a
  similarity's bits (not XLA:CPU's, 512 to 8192): one per search keeps them.
  """
  return 1024 if platform == "cpu" else 4096


class Searcher:
  """Exact top-k search of query rows against anchor chunks on one mesh.

  Args:
    mesh: any mesh; an axis named "queries" splits query rows, the others
      together split the anchors (see the module docstring).
    k: neighbours kept per row (METHODS.md: 800).
    query_chunk: query rows per step, a multiple of the number of devices.
      Peak memory per device is about query_chunk / Q x L x 4 bytes; on CPU
      devices (host dots) steps are as equal as the rows allow, and the
      Searcher keeps that buffer for its next search (host_dots.py).
    block: anchors per similarity dot (a device holds at least one block;
      on CPU devices the fewest per dot, host_dots.py); 0 =
      `default_block(platform)`: 1024 on CPU devices, 4096 elsewhere.
    top_k: where each device's top-k is taken: "xla" (`lax.top_k` in the
      program), "host" (`exact_top_k` on the host's cores; on CPU devices
      the host's BLAS computes the similarities too) or "auto": host on
      CPU devices, where XLA's top_k runs on one thread, xla elsewhere.
      Given the same similarities both select the same rows, bit for bit;
      on CPU the two paths' dots (BLAS, XLA) differ in rounding.
  """

  def __init__(self, mesh: Mesh, k: int, query_chunk: int = 1024, block: int = 0,
               top_k: str = "auto"):
    self.mesh = search_mesh(mesh)
    self.num_devices = self.mesh.devices.size
    self.anchor_devices = self.mesh.shape[AXIS]
    if k <= 0:
      raise UserError(f"k={k} must be a positive number of anchors per row.")
    if query_chunk <= 0 or query_chunk % self.num_devices:
      raise UserError(
          f"query_chunk={query_chunk} must be a positive multiple of the number of "
          f"devices ({self.num_devices}), e.g. {_round_up(max(query_chunk, 1), self.num_devices)}.")
    if block < 0:
      raise UserError(f"anchor_block={block} must be positive (or 0: the backend's default).")
    if top_k not in TOP_K:
      raise UserError(f"top_k={top_k!r} is not one of {list(TOP_K)}.")
    platform = self.mesh.devices.flat[0].platform
    self.on_cpu = platform == "cpu"
    block = block or default_block(platform)
    # Every anchor device's candidates for a row are on this host: the host
    # top-k merges them itself, with no collective program.
    self.all_local = all(d.process_index == jax.process_index() for d in self.mesh.devices.flat)
    if top_k == "auto":
      top_k = "host" if self.on_cpu else "xla"
    self.k, self.query_chunk, self.block, self.top_k = k, query_chunk, block, top_k
    self.rows = NamedSharding(self.mesh, ROWS)
    self.replicated = NamedSharding(self.mesh, P())
    self.query_rows = NamedSharding(self.mesh, P(QUERY_AXIS))
    self._candidates = NamedSharding(self.mesh, P(QUERY_AXIS, AXIS))  # device_top_k's
    self._buffers = {}  # host_dots.chunk_blocks'

  # ------------------------------------------------------------ placement

  def chunk_rows(self, n: int, dim: int = 1) -> int:
    """Size A * L of a chunk holding n anchors of dimension dim: L rows per
    device, at least one block, rounded up only as far as keeps each
    device's first row 64-byte aligned in an aligned array (not at all when
    dim is a multiple of 16 floats), so that it can be used in place."""
    rows = 16 // math.gcd(dim, 16)
    return self.anchor_devices * max(
        self.block, _round_up(math.ceil(n / self.anchor_devices), rows))

  def place(self, rows: Callable[[int, int], np.ndarray], offset: int, n: int,
            dim: int, available: tuple[int, int] | None = None) -> AnchorChunk:
    """Puts anchors [offset, offset + n) on the mesh.

    `rows(start, end)` returns float32 [end - start, dim] anchor embeddings
    for start < end <= offset + n, or for any rows in `available` = (first,
    end) when given (an in-memory array's rows: other anchors than the
    chunk's are masked in the search). Each host is only asked for the rows
    of its own devices, so no host holds more than its share. On CPU devices
    rows that are 64-byte aligned (`aligned`; an aligned array's slices at
    row multiples of 16 floats are) are used in place, not copied; with
    `available`, so is a device whose rows run past the chunk's end (it
    takes the array's rows there, or its last L rows), where it would
    otherwise be a zero-padded copy.
    """
    total = self.chunk_rows(n, dim)
    local = total // self.anchor_devices
    starts = np.arange(self.anchor_devices, dtype=np.int64) * local + offset
    if available is not None:
      # A device whose rows would run past the array's end takes its last L
      # rows instead: they start before the device's own, which it masks.
      over = starts + local > available[1]
      starts[over] = available[1] - local
      if (starts < available[0]).any():  # the array is shorter than a device's rows
        starts = np.arange(self.anchor_devices, dtype=np.int64) * local + offset
        available = None
    filled = {}

    def fill(index):
      lo, hi, _ = index[0].indices(total)
      if (lo, hi) not in filled:  # replicas (over a query axis) read their rows once
        real = max(0, min(hi, n) - lo)
        first = int(starts[lo // local])
        if available is not None and first + local <= available[1]:
          # The array's rows, past the chunk's end or before the device's own
          # included (masked): a view, not a zero-padded copy.
          filled[lo, hi] = aligned(rows(first, first + local)) if self.on_cpu else (
              np.asarray(rows(first, first + local), np.float32))
        elif real == hi - lo:  # no padding: the rows as they come, not a copy of them
          block = rows(offset + lo, offset + hi)
          # On CPU an aligned array is used in place; elsewhere device_put
          # copies to the device anyway, and an aligned host copy is waste.
          filled[lo, hi] = aligned(block) if self.on_cpu else np.asarray(block, np.float32)
        else:
          block = filled[lo, hi] = aligned_empty((hi - lo, dim))
          block[real:] = 0.0
          if real:
            block[:real] = rows(offset + lo, offset + lo + real)
      return filled[lo, hi]

    data = jax.make_array_from_callback((total, dim), NamedSharding(self.mesh, P(AXIS)), fill)
    return AnchorChunk(data=data, offset=offset, n=n, starts=starts.astype(np.int32))

  # ------------------------------------------------------------ searching

  def search(self, queries: np.ndarray, chunks: Iterable[AnchorChunk],
             start: TopK | None = None) -> TopK:
    """Exact top-k of every query row over all anchors of `chunks`.

    Args:
      queries: [n, d] float32, the same on every host.
      chunks: consecutive anchor chunks in index order (streamed: each is
        used once, for every query chunk, before the next is read).
      start: the top-k over the anchors before the first chunk, to be updated
        (an anchor-set update: the result equals a search from scratch).

    Returns:
      TopK over anchors [0, end of the last chunk), on every host.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    # On CPU devices the host runs the dots too (host_dots.py), in steps of
    # equal rows (no program to recompile); elsewhere the queries go to the devices.
    dots_here = self.top_k == "host" and self.on_cpu
    n, qc = queries.shape[0], self.query_chunk
    if dots_here:
      qc = host_dots.step_rows(n, qc, self.num_devices)
    # Full steps are views of the queries; the last is a zero-padded copy.
    q_host = [queries[i:i + qc] if i + qc <= n else np.pad(queries[i:], ((0, i + qc - n), (0, 0)))
              for i in range(0, n, qc)]
    rows = len(q_host) * qc
    q_dev = q_host if dots_here else [sharding.place(q, self.query_rows) for q in q_host]
    carry = [None] * len(q_dev)
    host = self.top_k == "host"
    on_host = host and self.all_local  # the whole top-k on this host, carry included
    end = 0
    if start is not None:
      if start.k != self.k:
        raise UserError(f"stored top-k rows have k={start.k}, but k={self.k} was asked; "
                        "recompute them (delete the cache) or keep k.")
      vals = np.pad(start.sims, ((0, rows - n), (0, 0)), constant_values=-np.inf)
      idx = np.pad(start.idx, ((0, rows - n), (0, 0)))
      put = (lambda x: x) if on_host else (lambda x: sharding.place(x, self.rows))
      carry = [(put(vals[i:i + qc]), put(idx[i:i + qc])) for i in range(0, rows, qc)]
      end = start.num_anchors
    elif on_host:
      vals, idx = np.empty((rows, self.k), np.float32), np.empty((rows, self.k), np.int32)
    out = (vals, idx) if on_host else None  # on this host the steps write the result in place
    # The host dots' outputs, for every step and the next search (taken
    # here: a concurrent search makes its own).
    buffers, self._buffers = self._buffers, {}
    # This host's devices: (first query row, rows, anchor device), for the host dots'
    # blocks when the collective merges them (query_chunk: the Asif class sets it).
    group = qc // self.mesh.shape[QUERY_AXIS]
    positions = None if on_host else {
        d: (g * group, group, j) for (g, j), d in np.ndenumerate(self.mesh.devices)
        if d.process_index == jax.process_index()}
    for chunk in chunks:
      if chunk.offset != end:
        raise ValueError(f"anchor chunk starts at {chunk.offset}, expected {end}")
      local_rows = chunk.data.shape[0] // self.anchor_devices
      k_local = min(self.k, local_rows)
      single = self.anchor_devices == 1 and local_rows >= self.k
      if not dots_here:
        program = (sims_program(self.mesh, local_rows, self.block) if host else
                   search_program(self.mesh, local_rows, self.block, k_local))
        offset = sharding.place(np.asarray(chunk.offset, np.int32), self.replicated)
        limit = sharding.place(np.asarray(chunk.end, np.int32), self.replicated)
        starts = jax.make_array_from_callback(
            chunk.starts.shape, NamedSharding(self.mesh, P(AXIS)), lambda idx: chunk.starts[idx])
      for i, q in enumerate(q_dev):
        if dots_here:
          blocks = host_dots.chunk_blocks(q, chunk, self.block, buffers, positions)
        else:
          res = program(q, chunk.data, offset, limit, starts)
          blocks = host_topk.array_blocks(res) if host else None
        # The chunk's query rows past n are padding: the host top-k skips
        # them (a zero row ties with every anchor, the slowest case there).
        real = min(qc, n - i * qc)
        if on_host:
          carry[i] = host_topk.local_top_k(blocks, qc, self.k, chunk.offset, chunk.end,
                                           chunk.starts, carry[i], real,
                                           tuple(o[i * qc:(i + 1) * qc] for o in out))
          continue
        if host:
          res = host_topk.device_top_k(blocks, k_local, chunk.offset, chunk.end, chunk.starts,
                                       self._candidates, (qc, self.anchor_devices * k_local),
                                       real)
        if not single:
          # Wait for the collective: XLA:CPU runs each device's program on a
          # shared thread pool, and steps dispatched ahead (no data dependence
          # on it) can take the threads its participants wait for (deadlock).
          res = jax.block_until_ready(gather_program(self.mesh, self.k)(*res))
        carry[i] = res if carry[i] is None else merge_program(self.mesh, self.k)(*carry[i], *res)
      end = chunk.end
    if end < self.k:
      raise UserError(f"k={self.k} is larger than the number of anchors ({end}); "
                      f"set --config.asif.k to at most {end} or add anchors.")
    self._buffers = buffers
    if on_host:
      return TopK(sims=out[0][:n], idx=out[1][:n], num_anchors=end)
    sims, idx = (np.concatenate([sharding.fetch_global(c[j]) for c in carry])[:n] for j in (0, 1))
    return TopK(sims=sims, idx=idx, num_anchors=end)


def in_memory_chunks(searcher: Searcher, embeddings: np.ndarray, offset: int = 0,
                     chunk_size: int = 0, start: int = 0) -> Iterable[AnchorChunk]:
  """Anchor chunks over a host-identical [n, d] array of anchors [offset,
  offset + n): rows [start, n) of it, all at once or chunk_size at a time.
  Every device's rows are a view of the array (on CPU devices, when it is
  64-byte aligned), rows before `start` included where a device reads them."""
  n = embeddings.shape[0]
  step = chunk_size or max(n - start, 1)
  for lo in range(start, n, step):
    hi = min(n, lo + step)
    yield searcher.place(lambda a, b: embeddings[a - offset:b - offset], offset + lo,
                         hi - lo, embeddings.shape[1], available=(offset, offset + n))
