"""Each device's exact top-k on its host's cores: ASIF's search on CPU devices.

XLA:CPU runs `lax.top_k` as a single-threaded partial sort; on a CPU host
each device's similarity block (computed by the host's BLAS, host_dots.py,
or returned by the search program, relative.py) is a `Block` here, and this
module takes its top-k with NumPy on every core of the host, with
`lax.top_k`'s result to the bit (same values, same positions, same order).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
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
  exact top-k of those few is taken (`_smallest_keys`). A row whose
  threshold keeps fewer than k (an unlucky sample) or more than 8 k (ties),
  or is padding, is selected from in full instead; either way the result is
  the same bits. One
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
  sample = [v[:, ::stride] for v, _ in parts]
  # One part (parts side by side are one): the partition's copy is the only one.
  sample = sample[0] if len(sample) == 1 else np.concatenate(sample, axis=1)
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
  keys = np.full((r, width), _FILL, np.uint64)
  # Every kept value above a positive threshold is positive (the usual case:
  # the top few percent of cosine similarities): a shorter map to keys.
  positive = bool(thr[~slow].min(initial=np.inf) > 0)
  before = np.zeros(r, np.int64)  # a row's kept entries of the parts before this one
  row_start = np.arange(r, dtype=np.int64) * width
  for flat, part_count, (v, index) in zip(flats, counts, parts):
    n_j = v.shape[1]
    if slow.any():
      flat = flat[~slow[flat // n_j]]
      part_count = np.where(slow, 0, part_count)
    if np.isscalar(index):  # the entry's index: its column plus the part's first
      index = np.repeat(np.arange(r, dtype=np.int64) * n_j - index, part_count)
      np.subtract(flat, index, out=index)
    else:
      index = np.asarray(index).reshape(-1)[flat]
    # Each kept entry's place in the flat [r, width] keys: its row's start
    # plus the row's entries of earlier parts plus its rank in this part's
    # (one repeat per row, not a division and two gathers per entry).
    first = np.cumsum(part_count) - part_count
    dest = np.repeat(row_start + before - first, part_count)
    dest += np.arange(flat.size)
    keys.reshape(-1)[dest] = _keys(_values_at(v, flat, part_count), index, positive)
    before += part_count
  # The fill (after every real key) never beats a fast row's k kept.
  vals, idx = _smallest_keys(keys, k, positive)
  slow = np.flatnonzero(slow)
  if slow.size:
    vals[slow], idx[slow] = _concatenated_top_k(parts, k, slow)
  return vals, idx


def _values_at(v: np.ndarray, flat: np.ndarray, row_count: np.ndarray) -> np.ndarray:
  """v.reshape(-1)[flat] (`row_count` of them in each row), reading a
  row-strided v in place (a part of host_dots.py's wider buffer) rather
  than copying all of it."""
  if v.flags.c_contiguous or v.strides[1] != v.itemsize or v.strides[0] % v.itemsize:
    return v.reshape(-1)[flat]
  row = v.strides[0] // v.itemsize  # elements from one row's start to the next's
  line = np.lib.stride_tricks.as_strided(v, ((v.shape[0] - 1) * row + v.shape[1],),
                                         (v.itemsize,), writeable=False)
  return line[flat + np.repeat(np.arange(v.shape[0], dtype=np.int64) * (row - v.shape[1]),
                               row_count)]


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
  keys = np.concatenate([
      _keys(v[rows], np.arange(v.shape[1], dtype=np.int64) + int(index)
            if np.isscalar(index) else np.asarray(index)[rows]) for v, index in parts], axis=1)
  if keys.shape[1] < k:  # too few entries in all: fill with non-entries
    keys = np.pad(keys, ((0, 0), (0, k - keys.shape[1])), constant_values=_FILL)
  return _smallest_keys(keys, k)


# Selection by one unsigned 64-bit key per entry: the value's bits mapped so
# that a larger float32 gives a smaller key, above its index (< 2^31). Keys
# are distinct within a row, so the k smallest, sorted, are exactly the
# order (value desc, index asc) with no tie to settle; and the map is the
# total order XLA:CPU's TopK compares in (+0 before -0, -inf last), so the
# rows are lax.top_k's to the bit. NumPy partitions and sorts uint64 with
# AVX-512 where the CPU has it: [64, 1300] kept entries to their sorted top
# 800 in 0.3 ms, against 1.6 ms for an argpartition, an argsort, the tie
# passes and the gathers.
_FILL = np.uint64(0xFF800000_FFFFFFFF)  # (-inf, -1): after every real entry


def _flip(bits: np.ndarray, positive: bool, out: np.ndarray | None = None) -> np.ndarray:
  """float32 bits (as uint32) -> their key's high word, larger floats to
  smaller words; the map is its own inverse. Non-negative floats: flip the
  31 bits below the sign; negative ones: keep the bits (with the sign set,
  more negative -> larger). `positive`: every float is > 0, one XOR."""
  mask = (np.uint32(0x7FFFFFFF) if positive
          else ((bits >> 31) - np.uint32(1)) & np.uint32(0x7FFFFFFF))
  return np.bitwise_xor(bits, mask, out=out)


def _keys(values: np.ndarray, index: np.ndarray, positive: bool = False) -> np.ndarray:
  """float32 values and their int indices -> uint64 keys, ascending in
  (value desc, index asc). `positive`: every value is > 0."""
  bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
  keys = _flip(bits, positive).astype(np.uint64)
  # In place: at 1,300 kept a row, a fresh temporary per step cost more in
  # page faults than its arithmetic (glibc's defaults; 3x the time).
  keys <<= np.uint64(32)
  index = np.asarray(index)
  keys |= (index.view(np.uint64) if index.dtype == np.int64  # (>= 0 then)
           else index.astype(np.uint32).astype(np.uint64))
  return keys


def _smallest_keys(keys: np.ndarray, k: int,
                   positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Each row's k smallest keys, sorted, decoded: (values [r, k] float32,
  indices [r, k] int32). `positive`: the rows' k smallest are of values > 0."""
  if keys.shape[1] > k:
    keys = np.partition(keys, k - 1, axis=1)[:, :k]
  keys = np.sort(keys, axis=1)
  bits = (keys >> np.uint64(32)).astype(np.uint32)
  _flip(bits, positive, out=bits)  # the map is its own inverse
  return bits.view(np.float32), keys.astype(np.uint32).view(np.int32)


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


@dataclasses.dataclass
class Block:
  """One anchor device's similarities for rows of a query chunk, on the host.

  device: whose candidates these are (device_top_k places them there);
    None for the host's own merge (local_top_k).
  row0: the block's first row in the query chunk.
  j: the anchor device: columns are its rows, global index starts[j] on;
    those before its own anchors (offset + j L) and past the chunk's end
    are -inf (relative.AnchorChunk).
  data: [rows, L] float32.
  """

  device: object
  row0: int
  j: int
  data: np.ndarray


def array_blocks(sims: jax.Array) -> list[Block]:
  """The blocks of the search program's similarities [Qc, A * L] (top_k
  "host" on an accelerator mesh): this host's shards, each the device's."""
  out = []
  for shard in sims.addressable_shards:
    data = np.asarray(shard.data)
    out.append(Block(shard.device, shard.index[0].start or 0,
                     (shard.index[1].start or 0) // data.shape[1], data))
  return out


def _own(block: Block, offset: int, starts: np.ndarray):
  """(global index of the block's column 0, columns before the device's own)."""
  start = int(starts[block.j])
  return start, offset + block.j * block.data.shape[1] - start


def _row_slices(rows: int):
  return [(lo, min(lo + _TASK_ROWS, rows)) for lo in range(0, rows, _TASK_ROWS)]


def _real_rows(first: int, rows: int, real: int | None) -> int:
  """How many of a block's `rows` query rows, the first at `first` in the
  query chunk, are real (the chunk's first `real`; None: all)."""
  return rows if real is None else min(rows, max(0, real - first))


def _top_k_plus(block: np.ndarray, k_local: int, start: int):
  vals, pos = exact_top_k(block, k_local)
  return vals, pos + np.int32(start)


def device_top_k(blocks: list[Block], k_local: int, offset: int, end: int,
                 starts: np.ndarray, sharding, shape: tuple[int, int],
                 real: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Program 1's top-k on the host: each local device's block [rows, L]
  (anchors [offset, end) of the chunk, the rest -inf), in row slices over
  this host's cores, -> candidates `shape` = [Qc, A * k_local] (global
  anchor indices) with `sharding` (each block's on its device), for the
  collective merge (relative.py's program 2) when anchor devices span
  hosts. A device's masked columns are -inf: they come last in its list.
  Query rows from `real` on (padding) get (-inf, -1) without a top-k."""
  # The padding columns (-inf) past the chunk's end are left out unless
  # fewer than k_local are real.
  cut = []
  for b in blocks:
    start, _ = _own(b, offset, starts)
    cut.append((b, start, b.data[:, :max(k_local, min(b.data.shape[1], end - start))]))
  tasks = [(n, lo, hi) for n, (b, _, data) in enumerate(cut)
           for lo, hi in _row_slices(_real_rows(b.row0, data.shape[0], real))]

  def run(task):
    n, lo, hi = task
    _, start, data = cut[n]
    return _top_k_plus(data[lo:hi], k_local, start)

  done = list(pool().map(run, tasks))
  out = []
  for j, fill in enumerate((-np.inf, -1)):  # values, indices
    pieces = {}
    for n, (b, _, data) in enumerate(cut):
      mine = [d[j] for t, d in zip(tasks, done) if t[0] == n]
      pad = data.shape[0] - sum(len(m) for m in mine)
      mine.append(np.full((pad, k_local), fill, (np.float32, np.int32)[j]))
      pieces[b.device] = jax.device_put(np.concatenate(mine), b.device)
    out.append(jax.make_array_from_single_device_arrays(
        shape, sharding, [pieces[d] for d in sharding.addressable_devices_indices_map(shape)]))
  return out[0], out[1]


def _side_by_side(parts: list) -> list:
  """Parts in anchor order, each run of them that lie side by side in one
  array (host_dots.py's buffer) with consecutive indices joined into one
  view: one longer part selects in fewer steps (2 x [64, 10k] -> [64, 20k]:
  7% less time on 2 cores, the GIL taken fewer times)."""
  runs = []  # [first part, columns, first index]
  for v, index in parts:
    if runs:
      u, width, first = runs[-1]
      # Row i of the joined view is u's row i and then the memory after it,
      # v's row i: the same rows, strides and array, v starting where u ends.
      if (first + width == index and u.base is not None and u.base is v.base
          and u.shape[0] == v.shape[0] and u.strides == v.strides
          and u.strides[1] == u.itemsize
          and v.ctypes.data == u.ctypes.data + width * u.itemsize):
        runs[-1][1] += v.shape[1]
        continue
    runs.append([v, v.shape[1], index])
  return [(u if width == u.shape[1] else np.lib.stride_tricks.as_strided(
      u, (u.shape[0], width), writeable=False), first) for u, width, first in runs]


def local_top_k(blocks: list[Block], rows: int, k: int, offset: int, end: int,
                starts: np.ndarray, carry: tuple[np.ndarray, np.ndarray] | None = None,
                real: int | None = None,
                out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A query chunk's global top-k, all on this host, when every device of
  the search mesh is this host's: per row slice (one task each over the
  host's cores), one exact selection over the running `carry` and every
  anchor device's block (`blocks`, of a chunk of `rows` query rows), in
  anchor order (`top_k_of_parts`). The same rows,
  bit for bit, as `device_top_k` followed by the collective merge and
  `lax.top_k`, without that program: no compile, no copy back to the
  devices, no collective, and no per-device top-k lists to merge.

  Query rows from `real` on are padding: they get (-inf, -1), and the
  carry's rows there are not read.

  `out`: (values, indices) [Qc, k] to write the rows into, e.g. rows of the
  search's result, or the carry itself (a task has read its rows of the
  carry before they are written); None: new arrays.

  Returns: (values [Qc, k] float32, indices [Qc, k] int32) on the host.
  """
  groups = {}  # first query row -> its anchor devices' blocks, in anchor order
  for b in blocks:
    start, skip = _own(b, offset, starts)
    # The device's own anchors only: masked columns never beat a real anchor.
    own = b.data[:, skip:max(skip, end - start)]
    if own.shape[1]:
      groups.setdefault(b.row0, []).append((own, start + skip))
  for r0, group in groups.items():
    group.sort(key=lambda g: g[1])  # once per query group, not per row slice
    groups[r0] = _side_by_side(group)
  tasks = [(r0, group, lo, hi) for r0, group in groups.items()
           for lo, hi in _row_slices(_real_rows(r0, group[0][0].shape[0], real))]

  def run(task):
    # One selection over the carry (lower anchors) and every device's block,
    # in anchor order: the concatenated row's top-k, without concatenating.
    r0, group, lo, hi = task
    parts = [(own[lo:hi], np.int32(start)) for own, start in group]
    if carry is not None:
      parts.insert(0, (carry[0][r0 + lo:r0 + hi], carry[1][r0 + lo:r0 + hi]))
    return top_k_of_parts(parts, k)

  vals, idx = out or (np.empty((rows, k), np.float32), np.empty((rows, k), np.int32))
  done = pool().map(run, tasks)
  covered = np.zeros(rows, bool)
  for r0, _, lo, hi in tasks:
    covered[r0 + lo:r0 + hi] = True
  vals[~covered], idx[~covered] = -np.inf, -1
  for (r0, _, lo, hi), (v, i) in zip(tasks, done):
    vals[r0 + lo:r0 + hi], idx[r0 + lo:r0 + hi] = v, i
  return vals, idx
