"""Each device's exact top-k on its host's cores: ASIF's search on CPU devices.

XLA:CPU runs `lax.top_k` as a single-threaded partial sort; on a CPU host the
search program (relative.py) returns each device's similarity block instead,
and this module takes its top-k with NumPy on every core of the host, with
`lax.top_k`'s result to the bit (same values, same positions, same order).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import numpy as np


def exact_top_k(s: np.ndarray, k: int, stride: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Each row's k largest values and their positions, (value desc, position asc).

  The order `lax.top_k` gives, computed on the host (XLA:CPU's top_k is a
  single-threaded partial sort; NumPy releases the GIL, so rows can be split
  over threads). Where a row is long against k, a threshold is found cheaply
  first: the value that about 2 k of the row exceed, read off a strided
  sample of every `stride`-th column. Every value at or above it is kept
  (one vectorised compare, about 2 k per row), and the exact top-k of those
  few is taken; they are in position order, so ties stay so. A row whose
  threshold keeps fewer than k (an unlucky sample) or more than 8 k (ties),
  or is padding, goes the exact partition path instead; either way the
  result is the same bits.

  Args:
    s: [r, n] float32, n >= k (masked entries at -inf).
    stride: the sample's column stride (tests vary it).
  Returns:
    (values [r, k] float32, positions [r, k] int32).
  """
  r, n = s.shape
  want = -(-2 * k // stride) + 4  # sample values above the threshold
  if k >= n or n // stride < 4 * want:
    return _partition_top_k(s, k)
  sample = s[:, ::stride]
  m = sample.shape[1]
  thr = np.partition(sample, m - want, axis=1)[:, m - want:m - want + 1]
  flat = np.flatnonzero(s >= thr)  # row-major: positions ascend within a row
  rows = flat // n
  count = np.bincount(rows, minlength=r)
  # The slow way for rows the threshold kept fewer than k of (an unlucky
  # sample), or many more (a row of ties), and -inf thresholds (padding).
  slow = (count < k) | (count > 8 * k) | ~np.isfinite(thr[:, 0])
  if slow.any():
    keep = ~slow[rows]
    flat, rows = flat[keep], rows[keep]
    count[slow] = 0
  first = np.cumsum(count) - count
  width = max(int(count.max()), k)
  vals = np.full((r, width), -np.inf, np.float32)
  pos = np.full((r, width), n, np.int32)
  within = np.arange(flat.size) - first[rows]
  vals[rows, within] = s.reshape(-1)[flat]
  pos[rows, within] = flat - rows * n
  # The kept are in position order, so the same exact top-k over them keeps
  # ties in position order; the -inf fill never beats a fast row's k finite.
  vals, order = _partition_top_k(vals, k)
  pos = np.take_along_axis(pos, order, 1)
  slow = np.flatnonzero(slow)
  if slow.size:
    vals[slow], pos[slow] = _partition_top_k(s[slow], k)
  return vals, pos


def _partition_top_k(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """exact_top_k by an O(n) partition per row (NumPy's introselect) and a sort
  of the k kept. Exact with ties: a row with more than k values >= its k-th
  largest (a tie across the cut, where the partition's choice among the tied
  is arbitrary) is sorted in full, stably; rows whose kept values tie among
  themselves are re-sorted by position."""
  n = s.shape[1]
  if k >= n:
    pos = np.argsort(-s, axis=1, kind="stable")[:, :k]
  else:
    # One kth only: NumPy partitions once per kth, and a second doubles the cost.
    part = np.argpartition(s, n - k, axis=1)
    pos = part[:, n - k:]
    kth = np.take_along_axis(s, part[:, n - k:n - k + 1], 1)
    tied = np.flatnonzero(np.count_nonzero(s >= kth, axis=1) > k)
    if tied.size:
      pos[tied] = np.argsort(-s[tied], axis=1, kind="stable")[:, :k]
  vals = np.take_along_axis(s, pos, 1)
  order = np.argsort(-vals, axis=1)  # unstable: equal kept values are fixed next
  pos, vals = np.take_along_axis(pos, order, 1), np.take_along_axis(vals, order, 1)
  tied = np.flatnonzero((vals[:, 1:] == vals[:, :-1]).any(axis=1))
  if tied.size:
    order = np.lexsort((pos[tied], -vals[tied]), axis=1)
    pos[tied] = np.take_along_axis(pos[tied], order, 1)
    vals[tied] = np.take_along_axis(vals[tied], order, 1)
  return vals, pos.astype(np.int32)


@functools.lru_cache(maxsize=None)
def pool() -> concurrent.futures.ThreadPoolExecutor:
  """One worker per core for ASIF's host-side steps (the top-k here, scoring.py's join)."""
  return concurrent.futures.ThreadPoolExecutor(host_cores(), thread_name_prefix="asif-host")


def host_cores() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


# Rows per host top-k task: its temporaries (int64 positions of every
# column) stay small, and tasks spread evenly over the cores.
_TASK_ROWS = 128


def _blocks(sims: jax.Array, k_local: int, offset: int, end: int):
  """This host's similarity blocks of a query chunk: (shard, first anchor,
  block) with the padding columns (-inf) left out unless fewer than k_local
  are real. On a CPU device the block is the device buffer itself."""
  out = []
  for shard in sims.addressable_shards:
    block = np.asarray(shard.data)
    start = offset + (shard.index[1].start or 0)
    out.append((shard, start, block[:, :max(k_local, min(block.shape[1], end - start))]))
  return out


def _row_slices(rows: int):
  return [(lo, min(lo + _TASK_ROWS, rows)) for lo in range(0, rows, _TASK_ROWS)]


def _top_k_plus(block: np.ndarray, k_local: int, start: int):
  vals, pos = exact_top_k(block, k_local)
  return vals, pos + np.int32(start)


def device_top_k(sims: jax.Array, k_local: int, offset: int, end: int,
                 anchor_devices: int) -> tuple[jax.Array, jax.Array]:
  """Program 1's top-k on the host: each local device's block [rows, L] of
  `sims` (anchors [offset, end) of the chunk, the rest padding), in row
  slices over this host's cores, -> candidates [Qc, A * k_local] (global
  anchor indices), sharded as `sims` (each block's on its device), for the
  collective merge (relative.py's program 2) when anchor devices span hosts."""
  blocks = _blocks(sims, k_local, offset, end)
  tasks = [(n, lo, hi) for n, (_, _, block) in enumerate(blocks)
           for lo, hi in _row_slices(block.shape[0])]

  def run(task):
    n, lo, hi = task
    _, start, block = blocks[n]
    return _top_k_plus(block[lo:hi], k_local, start)

  done = list(pool().map(run, tasks))
  shape = (sims.shape[0], anchor_devices * k_local)
  out = []
  for j in range(2):  # values, indices
    pieces = [jax.device_put(np.concatenate([d[j] for t, d in zip(tasks, done) if t[0] == n]),
                             shard.device) for n, (shard, _, _) in enumerate(blocks)]
    out.append(jax.make_array_from_single_device_arrays(shape, sims.sharding, pieces))
  return out[0], out[1]


def merge_top_k(vals: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The top-k of candidate lists concatenated in ascending anchor order
  (so position order is index order among equal values): `lax.top_k`'s merge,
  with lists shorter than k filled by non-anchors (-inf, index -1)."""
  if vals.shape[1] < k:
    fill = k - vals.shape[1]
    vals = np.pad(vals, ((0, 0), (0, fill)), constant_values=-np.inf)
    idx = np.pad(idx, ((0, 0), (0, fill)), constant_values=-1)
  vals, order = exact_top_k(vals, k)
  return vals, np.take_along_axis(idx, order, 1)


def local_top_k(sims: jax.Array, k_local: int, k: int, offset: int, end: int,
                carry: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """A query chunk's global top-k, all on this host, when every device of
  the search mesh is this host's: each row slice's top-k_local per anchor
  device, those lists in device order (= anchor order) and the running
  `carry` before them merged to the top-k, one task per row slice over the
  host's cores. The same rows, bit for bit, as `device_top_k` followed by
  the collective merge and `lax.top_k`, without that program: no compile,
  no copy back to the devices, no collective.

  Returns: (values [Qc, k] float32, indices [Qc, k] int32) on the host.
  """
  groups = {}  # first query row -> its anchor devices' blocks, in anchor order
  for shard, start, block in _blocks(sims, k_local, offset, end):
    groups.setdefault(shard.index[0].start or 0, []).append((start, block))
  for blocks in groups.values():
    blocks.sort(key=lambda b: b[0])  # once per query group, not per row slice
  tasks = [(r0, blocks, lo, hi)
           for r0, blocks in groups.items() for lo, hi in _row_slices(blocks[0][1].shape[0])]

  def run(task):
    r0, blocks, lo, hi = task
    parts = [_top_k_plus(block[lo:hi], k_local, start) for start, block in blocks]
    if carry is not None:
      parts.insert(0, (carry[0][r0 + lo:r0 + hi], carry[1][r0 + lo:r0 + hi]))
    if len(parts) == 1 and k_local == k:
      return parts[0]
    return merge_top_k(np.concatenate([v for v, _ in parts], 1),
                       np.concatenate([i for _, i in parts], 1), k)

  vals = np.empty((sims.shape[0], k), np.float32)
  idx = np.empty((sims.shape[0], k), np.int32)
  for (r0, _, lo, hi), (v, i) in zip(tasks, pool().map(run, tasks)):
    vals[r0 + lo:r0 + hi], idx[r0 + lo:r0 + hi] = v, i
  return vals, idx
