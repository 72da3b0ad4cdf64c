"""ASIF's similarities on the host's BLAS, for CPU devices (top_k="host").

On a CPU mesh the devices' memory is the host's, and the search's dots are
the host's to run: NumPy's matmul (its BLAS: OpenBLAS in the PyPI wheels)
runs ASIF's [1024, 768] x [768, 1024] products at 250-270 GFLOP/s on 2
cores of an AVX-512 Xeon, against 175-220 for XLA:CPU's dots of the same
shape (2026-12-06); and a search with the host top-k then compiles no
program when every device is this host's. The host top-k (host_topk.py)
reads the blocks in place.

Bits. Every similarity comes from one product of the same shape, the query
chunk's [Qc, d] rows x a window of `block` anchors [d, block], whatever the
sharding, the streaming or the offset: a device's last window starts at
L - block and recomputes part of the one before. A BLAS gives a column the
same bits wherever it sits in a product of a given shape (OpenBLAS: tested
for shapes from [8, 8] x [8, 8] to [1024, 768] x [768, 1024], with 1 and 2
threads), so sharded, streamed, incremental and multi-host
searches are bit-identical, as the tests check (a BLAS that does not
promise it, e.g. MKL without MKL_CBWR set, may differ in last bits between
them). They differ from XLA's dots
(top_k="xla") in the last bits of some similarities: each path is exact
and deterministic, with its own rounding of the dot products.
"""

from __future__ import annotations

import functools

import numpy as np
import threadpoolctl

from zoomshot_jax.asif import host_topk
from zoomshot_jax.asif.host_topk import Block


def chunk_blocks(queries: np.ndarray, chunk, block: int, buffers: dict,
                 positions: dict | None = None) -> list[Block]:
  """This host's similarity blocks of a query chunk against an anchor chunk.

  Each of this host's anchor devices j gets [Qc, L] similarities to its L
  rows, computed here, at -inf outside its own anchors [offset + j L, end)
  (as the search program masks them), in windows of `block` anchors.

  Args:
    queries: [Qc, d] float32, C-contiguous (the padded query chunk).
    chunk: a relative.AnchorChunk on a CPU mesh.
    block: anchors per product.
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
    out = buffers["sims"] = np.empty((rows, len(shards) * local), np.float32)
  out = out[:rows]  # the first rows of a C array: the same layout
  sims, windows, masks = {}, [], []
  for n, j in enumerate(sorted(shards)):
    start = int(chunk.starts[j])
    skip = chunk.offset + j * local - start  # rows before the device's own
    own_end = max(skip, min(local, chunk.end - start))
    sims[j] = mine = out[:, n * local:(n + 1) * local]
    masks.append((mine, skip, own_end))
    if own_end > skip:  # a device of padding only has nothing to compute
      anchors = np.asarray(shards[j].data)  # the device buffer itself
      windows += [(anchors, mine, min(i * block, local - block))
                  for i in range(skip // block, -(-own_end // block))]

  def run(task):
    for anchors, sims_j, at in task:
      np.matmul(queries, anchors[at:at + block].T, out=sims_j[:, at:at + block])

  with _one_blas_thread():
    list(host_topk.pool().map(run, _runs(windows, block)))
  for mine, skip, own_end in masks:
    # Other anchors the windows cover, as the search program masks them.
    mine[:, :skip] = -np.inf
    mine[:, own_end:] = -np.inf
  if positions is None:
    return [Block(None, 0, j, sims_j) for j, sims_j in sims.items()]
  return [Block(d, row0, j, sims[j][row0:row0 + n]) for d, (row0, n, j) in positions.items()]


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


def _runs(windows: list, block: int, parts: int = 0) -> list[list]:
  """The windows in `parts` runs (0: two per core) of about equal work, one
  pool task each (runs of 4 windows were 15-20% slower: 5 runs on 2 cores). A
  device's last window overlaps the one before it when L is not a multiple
  of the block: the two stay in one run, so no two threads write the same
  columns."""
  parts = parts or 2 * host_topk.host_cores()
  cuts = set()
  for n in range(1, parts):
    cut = round(n * len(windows) / parts)
    if 0 < cut < len(windows):
      prev, nxt = windows[cut - 1], windows[cut]
      if nxt[1] is prev[1] and nxt[2] < prev[2] + block:  # would split an overlap
        cut += 1
      cuts.add(cut)
  bounds = [0, *sorted(c for c in cuts if c < len(windows)), len(windows)]
  return [windows[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


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
