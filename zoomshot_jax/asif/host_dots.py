"""ASIF's similarities on the host's BLAS, for CPU devices (top_k="host").

On a CPU mesh the devices' memory is the host's, and the search's dots are
the host's to run: NumPy's matmul (its BLAS: OpenBLAS in the PyPI wheels)
runs ASIF's products ([1000, 768] x [768, 5000], one per thread) at
300-330 GFLOP/s on 2 cores of an AVX-512 Xeon (2026-12-07), against
175-220 for XLA:CPU's dots of [1024, 768] x [768, 1024]; and a search
with the host top-k then compiles no program when every device is this
host's. The host top-k (host_topk.py) reads the blocks in place.

Bits. Every similarity comes from one product [Qc, d] x [d, w] of the
query chunk's rows and w >= `block` consecutive anchors of its device: each
device's own anchors, cut into about equal runs, two per core (no column
computed twice; the fixed windows of 1024 before, the last one overlapping
the one before, took 0.162-0.167 s for the dots of 20k anchors x 1k
queries against 0.142-0.144 s). A BLAS past its small-matrix kernels
gives a column the same bits whatever the product's rows, width or the
column's place in it (OpenBLAS 0.3.31 on AVX-512, tested: d from 3 to 768,
128 to 1024 rows, 10 to 12,000 columns; under about 1,200 rows x columns,
with d >= 32, it takes other kernels, which CPU's default block of 1024
keeps far off), so sharded, streamed, incremental and multi-host searches
are bit-identical, as the tests check (a BLAS that does not promise it,
e.g. MKL without MKL_CBWR set, may differ in last bits between them). They
differ from XLA's dots (top_k="xla") in the last bits of some
similarities: each path is exact and deterministic, with its own rounding
of the dot products.
"""

from __future__ import annotations

import functools

import numpy as np
import threadpoolctl

from zoomshot_jax import host_memory
from zoomshot_jax.asif import host_topk
from zoomshot_jax.asif.host_topk import Block


def chunk_blocks(queries: np.ndarray, chunk, block: int, buffers: dict,
                 positions: dict | None = None) -> list[Block]:
  """This host's similarity blocks of a query chunk against an anchor chunk.

  Each of this host's anchor devices j gets [Qc, L] similarities to its L
  rows, computed here, at -inf outside its own anchors [offset + j L, end)
  (as the search program masks them), in products of at least `block`
  anchors (`_pieces`).

  Args:
    queries: [Qc, d] float32, C-contiguous (the padded query chunk).
    chunk: a relative.AnchorChunk on a CPU mesh.
    block: fewest anchors per product (a device has at least that many rows).
    buffers: holds the output array, reused where it has the columns and at
      least the rows: by every query chunk of a search, and by the
      relative.Searcher's next search (no fresh pages to fault in: 5-8% of
      a search of 1k queries at 20k-50k anchors).
    positions: None: one block per anchor device, all Qc rows, for this
      host's own merge (host_topk.local_top_k). Else {device: (first row,
      rows, anchor device)} for this host's devices of the search mesh: one
      block per device, its query group's rows, for host_topk.device_top_k.
  """
  devices = len(chunk.starts)
  local = chunk.data.shape[0] // devices
  rows = queries.shape[0]
  shards = {}  # anchor device -> its shard (once: replicas over the query axis)
  for shard in chunk.data.addressable_shards:
    shards.setdefault((shard.index[0].start or 0) // local, shard)
  # One [Qc, local x devices] buffer, the devices side by side in anchor
  # order: the host top-k then selects from a row of them as one part.
  out = buffers.get("sims")
  if out is None or out.shape[1] != len(shards) * local or out.shape[0] < rows:
    shape = (rows, len(shards) * local)
    empty = host_memory.empty_small_pages if 4 * rows * shape[1] >= _SMALL_PAGES_FROM else np.empty
    out = buffers["sims"] = empty(shape, np.float32)
  out = out[:rows]  # the first rows of a C array: the same layout
  sims, ranges, masks = {}, [], []
  for n, j in enumerate(sorted(shards)):
    start = int(chunk.starts[j])
    skip = chunk.offset + j * local - start  # rows before the device's own
    own_end = max(skip, min(local, chunk.end - start))
    sims[j] = mine = out[:, n * local:(n + 1) * local]
    masks.append((mine, skip, own_end))
    if own_end > skip:  # a device of padding only has nothing to compute
      anchors = np.asarray(shards[j].data)  # the device buffer itself
      ranges.append((anchors, mine, skip, own_end))

  def run(piece):
    anchors, sims_j, lo, hi = piece
    np.matmul(queries, anchors[lo:hi].T, out=sims_j[:, lo:hi])

  with _one_blas_thread():
    list(host_topk.pool().map(run, _pieces(ranges, block)))
  for mine, skip, own_end in masks:
    # Other anchors (a device's rows before its own, past the chunk's end),
    # as the search program masks them; a widened piece computed some.
    mine[:, :skip] = -np.inf
    mine[:, own_end:] = -np.inf
  if positions is None:
    return [Block(None, 0, j, sims_j) for j, sims_j in sims.items()]
  return [Block(d, row0, j, sims[j][row0:row0 + n]) for d, (row0, n, j) in positions.items()]


# A buffer this large gets small pages (host_memory.empty_small_pages): 200k
# anchors x 1k queries (800 MB), a new process's first image search's dots
# 2.1 -> 1.2 s on a 2-core VM, a second one 1.06 -> 1.17 s (fresh buffers) and
# 0.51 -> 0.54 s (the kept one). At 50k (200 MB) the first 0.33-0.39 ->
# 0.29-0.31 s, a second 0.26-0.27 -> 0.29-0.30; at 20k (80 MB) the first
# 0.12 -> 0.13 s: huge pages there.
_SMALL_PAGES_FROM = 256 << 20


# Fewest query rows per step (unless query_chunk is smaller): OpenBLAS's
# sgemm gives a similarity the same bits in products of 128 to 1024 rows,
# wherever the row sits (tested: d from 8 to 768, blocks of 16 to 1024
# anchors, 1 and 2 threads), so a query's top-k does not depend on how many
# rows were searched with it; smaller products may take other kernels.
_MIN_ROWS = 128


def step_rows(n: int, most: int, multiple: int) -> int:
  """Query rows per step for a search of n rows: at most `most` (a multiple
  of `multiple`), in as few steps as that allows, as equal as they can be
  (1000 queries: one step of 1000 rows, not 1024 with 24 of padding to
  compute), rounded up to the multiple and to at least _MIN_ROWS."""
  steps = -(-max(n, 1) // most)
  rows = max(-(-n // steps), _MIN_ROWS)
  return min(most, -(-rows // multiple) * multiple)


def _pieces(ranges: list, block: int, parts: int = 0) -> list[tuple]:
  """The products of a query chunk: each device's own columns [lo, hi),
  cut into about equal pieces of about 1/`parts` (0: two per core) of all
  the columns, none narrower than `block`; one pool task each.

  One, two and four per core ran alike at 20k anchors x 1k queries on 2
  cores (0.208-0.210 s for both searches); two, so that a device with
  fewer own columns (at a chunk's end) leaves no core idle for long. A
  device with fewer than `block` own columns gets one piece of `block`
  columns over its masked rows (it has at least that many); no column is
  in two pieces, so no two threads write one.

  Args:
    ranges: (anchors [L, d], sims_j [rows, L], lo, hi) per device.
  Returns:
    (anchors, sims_j, first column, end column) per piece.
  """
  parts = parts or 2 * host_topk.host_cores()
  target = sum(hi - lo for _, _, lo, hi in ranges) / parts
  pieces = []
  for anchors, sims_j, lo, hi in ranges:
    width = hi - lo
    if width < block:
      lo = min(lo, anchors.shape[0] - block)
      pieces.append((anchors, sims_j, lo, lo + block))
      continue
    m = max(1, min(round(width / target), width // block))
    cuts = [lo + i * width // m for i in range(m + 1)]
    pieces += [(anchors, sims_j, a, b) for a, b in zip(cuts[:-1], cuts[1:])]
  return pieces


@functools.lru_cache(maxsize=None)
def _controller() -> threadpoolctl.ThreadpoolController:
  return threadpoolctl.ThreadpoolController()  # finds the loaded BLAS once


def _one_blas_thread():
  """A context: the BLAS on one thread per call while the pool's threads
  run the products side by side. With the BLAS's own threads instead (one
  call at a time), OpenBLAS's workers spin for a while after each call and
  took a core from the top-k that follows: 0.11-0.14 s against 0.08 s for
  its two selections at 20k x 1k, at the same dot speed."""
  return _controller().limit(limits=1, user_api="blas")
