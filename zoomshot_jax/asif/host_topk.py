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


def exact_top_k(s: np.ndarray, k: int, stride: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Each row's k largest values and their positions, (value desc, position asc).

  The order `lax.top_k` gives, computed on the host (XLA:CPU's top_k is a
  single-threaded partial sort; NumPy releases the GIL, so rows can be split
  over threads). See `top_k_of_parts`, of which this is the one-part case.

  Args:
    s: [r, n] float32, n >= k (masked entries at -inf).
    stride: the sample's column stride (tests vary it).
  Returns:
    (values [r, k] float32, positions [r, k] int32).
  """
  return top_k_of_parts([(s, 0)], k, stride)


def top_k_of_parts(parts: list, k: int, stride: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """The exact top-k of rows split into parts, as if they were concatenated.

  Each part is (values [r, n_j], index): `index` an int, the first index of
  the part's contiguous columns, or an int array [r, n_j] of each entry's
  own index (a running top-k's carry). Among equal values the parts' order,
  then each part's column order, must be index order (true of anchor blocks
  in anchor order after a carry of lower anchors, which is sorted by value
  then index); the result is then (value desc, index asc) per row, the
  order `lax.top_k` gives on the concatenated row. Rows shorter than k in
  all are filled with (-inf, -1).

  Where the rows are long against k, a threshold is found cheaply first:
  the value that about 1.5 k of a row exceed, read off a strided sample of
  every `stride`-th column of every part. Every value at or above it is
  kept (one vectorised compare per part, about 1.5 k per row in all),
  gathered per row in part order without concatenating the parts (at 200k
  anchors a copy of the rows would cost as much as the compares), and the
  exact top-k of those few is taken. A row whose threshold keeps fewer than
  k (an unlucky sample) or more than 8 k (ties), or is padding, goes the
  exact partition path instead; either way the result is the same bits. One
  selection over all parts, rather than one per part and a merge of their
  lists, is about a third less work (k = 800, two parts of 10k-100k).

  Returns:
    (values [r, k] float32, indices [r, k] int32).
  """
  r = parts[0][0].shape[0]
  n = sum(v.shape[1] for v, _ in parts)
  # Sample values above the threshold: it keeps about 1.5 k of a row, and
  # fewer than k only when 1.5 k / stride + 4 of a row's sampled values
  # fall in its top k, where k / stride are expected (4 standard deviations
  # at k = 800). 1.5 k from every 16th column rather than 2 k from every
  # 32nd: 9-10% less time at 2 x 10k-25k columns, the same at 2 x 100k.
  want = -(-3 * k // (2 * stride)) + 4
  if k >= n or n // stride < 4 * want:
    return _concatenated_top_k(parts, k, np.arange(r))
  sample = np.concatenate([v[:, ::stride] for v, _ in parts], axis=1)
  m = sample.shape[1]
  thr = np.partition(sample, m - want, axis=1)[:, m - want:m - want + 1]
  flats = [_flat_at_or_above(v, thr) for v, _ in parts]  # row-major: columns ascend in a row
  # Per row, from the sorted flat positions: where each row's run ends.
  counts = [np.diff(np.searchsorted(f, np.arange(r + 1, dtype=np.int64) * v.shape[1]))
            for f, (v, _) in zip(flats, parts)]
  count = np.sum(counts, axis=0)
  # The slow way for rows the threshold kept fewer than k of (an unlucky
  # sample), or many more (a row of ties), and -inf thresholds (padding).
  slow = (count < k) | (count > 8 * k) | ~np.isfinite(thr[:, 0])
  fast_count = np.where(slow, 0, count)
  width = max(int(fast_count.max()), k)
  vals = np.full((r, width), -np.inf, np.float32)
  idx = np.full((r, width), -1, np.int32)
  before = np.zeros(r, np.int64)  # a row's kept entries of the parts before this one
  row_start = np.arange(r, dtype=np.int64) * width
  for flat, part_count, (v, index) in zip(flats, counts, parts):
    n_j = v.shape[1]
    if slow.any():
      flat = flat[~slow[flat // n_j]]
      part_count = np.where(slow, 0, part_count)
    # Each kept entry's place in the flat [r, width] output: its row's start
    # plus the row's entries of earlier parts plus its rank in this part's
    # (one repeat per row, not a division and two gathers per entry).
    first = np.cumsum(part_count) - part_count
    dest = np.arange(flat.size) + np.repeat(row_start + before - first, part_count)
    vals.reshape(-1)[dest] = v.reshape(-1)[flat]
    idx.reshape(-1)[dest] = (
        flat - np.repeat(np.arange(r, dtype=np.int64) * n_j - index, part_count)
        if np.isscalar(index) else np.asarray(index).reshape(-1)[flat])
    before += part_count
  # The kept are in index order among equal values, so the same exact top-k
  # over them keeps ties in index order; the -inf fill never beats a fast
  # row's k finite.
  vals, order = _partition_top_k(vals, k)
  idx = np.take_along_axis(idx, order, 1)
  slow = np.flatnonzero(slow)
  if slow.size:
    vals[slow], idx[slow] = _concatenated_top_k(parts, k, slow)
  return vals, idx


def _flat_at_or_above(v: np.ndarray, thr: np.ndarray) -> np.ndarray:
  """np.flatnonzero(v >= thr), in up to half the time where 3-10% are kept.

  NumPy's nonzero of a bool array takes a memchr-based path when at most a
  tenth of it is set, and a branch-free loop otherwise; the memchr path
  costs per set entry, more than the branch-free loop's whole pass above
  about 3% (at 8%, about what a row of 20k anchors keeps, 1.6 ms against
  0.7 ms for 1.28M entries). There, set padding after the mask lifts the
  share past a tenth; its positions come last and are cut off.
  """
  size = v.size
  mask = np.empty(size + size // 9 + 2, bool)
  np.greater_equal(v, thr, out=mask[:size].reshape(v.shape))
  count = np.count_nonzero(mask[:size])
  if 10 * count > size or 30 * count < size:
    return np.flatnonzero(mask[:size])
  pad = (size - 10 * count) // 9 + 1  # (count + pad) / (size + pad) > 1/10
  mask[size:size + pad] = True
  return np.flatnonzero(mask[:size + pad])[:count]


def _concatenated_top_k(parts: list, k: int, rows: np.ndarray):
  """top_k_of_parts for `rows`, by concatenating them (short rows, slow rows)."""
  vals = [v[rows] for v, _ in parts]
  idx = [np.broadcast_to(np.arange(v.shape[1], dtype=np.int32) + np.int32(index), v.shape)
         if np.isscalar(index) else np.asarray(index)[rows] for v, (_, index) in zip(vals, parts)]
  vals, idx = (vals[0], idx[0]) if len(parts) == 1 else (
      np.concatenate(vals, axis=1), np.concatenate(idx, axis=1))
  if vals.shape[1] < k:  # too few entries in all: fill with non-entries
    fill = ((0, 0), (0, k - vals.shape[1]))
    vals = np.pad(vals, fill, constant_values=-np.inf)
    idx = np.pad(idx, fill, constant_values=-1)
  vals, order = _partition_top_k(vals, k)
  return vals, np.take_along_axis(idx, order, 1).astype(np.int32, copy=False)


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


# Rows per host top-k task: its temporaries stay small, and tasks spread
# evenly over the cores. [1024, 2 x 10k] rows on 2 cores: 45.7 ms in tasks
# of 128, 42.9 ms of 64, 51.6 ms of 32; at 2 x 100k a task of 64 rows costs
# 5% less per row than one of 128.
_TASK_ROWS = 64


def _blocks(sims: jax.Array, offset: int, starts: np.ndarray):
  """This host's similarity blocks of a query chunk: (shard, the global
  index of its first column, block, its masked leading columns: anchors
  before the device's own, relative.AnchorChunk). On a CPU device the block
  is the device buffer itself."""
  out = []
  for shard in sims.addressable_shards:
    block = np.asarray(shard.data)
    column = shard.index[1].start or 0
    start = int(starts[column // block.shape[1]])
    out.append((shard, start, block, offset + column - start))
  return out


def _row_slices(rows: int):
  return [(lo, min(lo + _TASK_ROWS, rows)) for lo in range(0, rows, _TASK_ROWS)]


def _real_rows(first: int, rows: int, real: int | None) -> int:
  """How many of a block's `rows` query rows, the first at `first` in the
  query chunk, are real (the chunk's first `real`; None: all)."""
  return rows if real is None else min(rows, max(0, real - first))


def _top_k_plus(block: np.ndarray, k_local: int, start: int):
  vals, pos = exact_top_k(block, k_local)
  return vals, pos + np.int32(start)


def device_top_k(sims: jax.Array, k_local: int, offset: int, end: int, starts: np.ndarray,
                 anchor_devices: int, real: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Program 1's top-k on the host: each local device's block [rows, L] of
  `sims` (anchors [offset, end) of the chunk, the rest padding), in row
  slices over this host's cores, -> candidates [Qc, A * k_local] (global
  anchor indices), sharded as `sims` (each block's on its device), for the
  collective merge (relative.py's program 2) when anchor devices span hosts.
  A device's masked columns are -inf: they come last in its list. Query
  rows from `real` on (padding) get (-inf, -1) without a top-k."""
  # The padding columns (-inf) past the chunk's end are left out unless
  # fewer than k_local are real.
  blocks = [(shard, start, block[:, :max(k_local, min(block.shape[1], end - start))])
            for shard, start, block, _ in _blocks(sims, offset, starts)]
  tasks = [(n, lo, hi) for n, (shard, _, block) in enumerate(blocks)
           for lo, hi in _row_slices(_real_rows(shard.index[0].start or 0, block.shape[0], real))]

  def run(task):
    n, lo, hi = task
    _, start, block = blocks[n]
    return _top_k_plus(block[lo:hi], k_local, start)

  done = list(pool().map(run, tasks))
  shape = (sims.shape[0], anchor_devices * k_local)
  out = []
  for j, fill in enumerate((-np.inf, -1)):  # values, indices
    pieces = []
    for n, (shard, _, block) in enumerate(blocks):
      mine = [d[j] for t, d in zip(tasks, done) if t[0] == n]
      pad = block.shape[0] - sum(len(m) for m in mine)
      mine.append(np.full((pad, k_local), fill, (np.float32, np.int32)[j]))
      pieces.append(jax.device_put(np.concatenate(mine), shard.device))
    out.append(jax.make_array_from_single_device_arrays(shape, sims.sharding, pieces))
  return out[0], out[1]


def local_top_k(sims: jax.Array, k: int, offset: int, end: int,
                starts: np.ndarray, carry: tuple[np.ndarray, np.ndarray] | None = None,
                real: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A query chunk's global top-k, all on this host, when every device of
  the search mesh is this host's: per row slice (one task each over the
  host's cores), one exact selection over the running `carry` and every
  anchor device's block, in anchor order (`top_k_of_parts`). The same rows,
  bit for bit, as `device_top_k` followed by the collective merge and
  `lax.top_k`, without that program: no compile, no copy back to the
  devices, no collective, and no per-device top-k lists to merge.

  Query rows from `real` on are padding: they get (-inf, -1), and the
  carry's rows there are not read.

  Returns: (values [Qc, k] float32, indices [Qc, k] int32) on the host.
  """
  groups = {}  # first query row -> its anchor devices' blocks, in anchor order
  for shard, start, block, skip in _blocks(sims, offset, starts):
    # The device's own anchors only: masked columns never beat a real anchor.
    own = block[:, skip:max(skip, end - start)]
    if own.shape[1]:
      groups.setdefault(shard.index[0].start or 0, []).append((own, start + skip))
  for blocks in groups.values():
    blocks.sort(key=lambda b: b[1])  # once per query group, not per row slice
  tasks = [(r0, blocks, lo, hi) for r0, blocks in groups.items()
           for lo, hi in _row_slices(_real_rows(r0, blocks[0][0].shape[0], real))]

  def run(task):
    # One selection over the carry (lower anchors) and every device's block,
    # in anchor order: the concatenated row's top-k, without concatenating.
    r0, blocks, lo, hi = task
    parts = [(block[lo:hi], np.int32(start)) for block, start in blocks]
    if carry is not None:
      parts.insert(0, (carry[0][r0 + lo:r0 + hi], carry[1][r0 + lo:r0 + hi]))
    return top_k_of_parts(parts, k)

  vals = np.full((sims.shape[0], k), -np.inf, np.float32)
  idx = np.full((sims.shape[0], k), -1, np.int32)
  for (r0, _, lo, hi), (v, i) in zip(tasks, pool().map(run, tasks)):
    vals[r0 + lo:r0 + hi], idx[r0 + lo:r0 + hi] = v, i
  return vals, idx
