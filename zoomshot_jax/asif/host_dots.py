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
    buffers: output arrays reused by anchor device (a search reuses them for
      every query chunk: no fresh pages each step).
    positions: None: one block per anchor device, all Qc rows, for this
      host's own merge (host_topk.local_top_k). Else {device: (first row,
      rows, anchor device)} for this host's devices of the search mesh: one
      block per device, its query group's rows, for host_topk.device_top_k.
  """
  devices = len(chunk.starts)
  local = chunk.data.shape[0] // devices
  rows = queries.shape[0]
  sims, windows, masks = {}, [], []
  for shard in chunk.data.addressable_shards:
    j = (shard.index[0].start or 0) // local
    if j in sims:
      continue  # a replica over the query axis
    start = int(chunk.starts[j])
    skip = chunk.offset + j * local - start  # rows before the device's own
    own_end = max(skip, min(local, chunk.end - start))
    out = buffers.get(j)
    if out is None or out.shape != (rows, local):
      out = buffers[j] = np.empty((rows, local), np.float32)
    sims[j] = out
    masks.append((out, skip, own_end))
    if own_end > skip:  # a device of padding only has nothing to compute
      anchors = np.asarray(shard.data)  # the device buffer itself
      windows += [(anchors, out, min(i * block, local - block))
                  for i in range(skip // block, -(-own_end // block))]

  def run(task):
    for anchors, out, at in task:
      np.matmul(queries, anchors[at:at + block].T, out=out[:, at:at + block])

  with _one_blas_thread():
    list(host_topk.pool().map(run, _runs(windows, block)))
  for out, skip, own_end in masks:
    # Other anchors the windows cover, as the search program masks them.
    out[:, :skip] = -np.inf
    out[:, own_end:] = -np.inf
  if positions is None:
    return [Block(None, 0, j, out) for j, out in sims.items()]
  return [Block(d, row0, j, sims[j][row0:row0 + n]) for d, (row0, n, j) in positions.items()]


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
