"""ASIF's top-k search and scores against a dense NumPy brute force (METHODS.md §3).

The brute force is written from the spec alone: every similarity, a sort by
(value desc, index asc), the top k raised to p, text rows normalised, dense
products, argmax over prompts. Sharded (8 devices), streamed, incremental
and in-memory single-device runs must give bit-identical rows, with the
top-k taken on the host (the CPU default) or by `lax.top_k` in the program.
"""

import jax
import numpy as np
import pytest
import threadpoolctl

from zoomshot_jax import sharding
from zoomshot_jax.asif import Asif, host_dots, host_topk, relative, scoring
from zoomshot_jax.errors import UserError


def _mesh(n):
  return sharding.make_mesh([("data", -1)], devices=jax.devices()[:n])


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_topk(queries, anchors, k):
  """(idx, sims) [n, k] by sorting every similarity: value desc, then index asc."""
  s = queries @ anchors.T
  order = np.lexsort((np.broadcast_to(np.arange(len(anchors)), s.shape), -s), axis=1)[:, :k]
  return order, np.take_along_axis(s, order, 1)


def dense_rep(queries, anchors, k, p, normalize):
  """The relative representations as dense [n, N] float64 rows."""
  idx, sims = brute_topk(queries, anchors, k)
  r = np.zeros((len(queries), len(anchors)))
  np.put_along_axis(r, idx, sims.astype(np.float64) ** p, 1)
  return r / np.linalg.norm(r, axis=1, keepdims=True) if normalize else r


@pytest.fixture(scope="module")
def exact_data():
  """Entries in {-2..2}/4: every dot product is exact in float32, so the
  brute force and the devices agree to the bit, and there are many exact
  ties (duplicated anchors, equal sums) for the tie rule to settle."""
  rng = np.random.default_rng(0)
  anchors = rng.integers(-2, 3, (300, 8)).astype(np.float32) / 4
  anchors[[10, 50, 200, 299]] = 0.5  # the largest dot any anchor can have with query 3
  queries = rng.integers(-2, 3, (37, 8)).astype(np.float32) / 4
  queries[3] = 0.5
  return queries, anchors


# all_local=False: the host top-k's candidates merged by the collective
# program, as when the anchor devices span hosts.
@pytest.mark.parametrize("num_devices, top_k, all_local",
                         [(1, "host", True), (8, "host", True), (8, "host", False),
                          (8, "xla", True)])
def test_search_equals_brute_force_with_ties(exact_data, num_devices, top_k, all_local):
  queries, anchors = exact_data
  searcher = relative.Searcher(_mesh(num_devices), k=20, query_chunk=16, block=8, top_k=top_k)
  assert searcher.top_k == top_k and searcher.all_local
  searcher.all_local = all_local
  res = searcher.search(queries, relative.in_memory_chunks(searcher, anchors))
  idx, sims = brute_topk(queries, anchors, 20)
  np.testing.assert_array_equal(res.idx, idx)
  np.testing.assert_array_equal(res.sims, sims)
  assert res.num_anchors == 300
  # Query 3's best anchor has four exact copies: they tie, lowest index first.
  np.testing.assert_array_equal(res.idx[3, :4], [10, 50, 200, 299])
  assert set(res.sims[3, :4]) == {2.0} and res.sims[3, 4] < 2.0
  # Streamed and updated: the merges keep the rule (the tied copies straddle
  # the chunk and update boundaries).
  streamed = searcher.search(queries, relative.in_memory_chunks(searcher, anchors,
                                                                chunk_size=64))
  first = searcher.search(queries, relative.in_memory_chunks(searcher, anchors[:150]))
  updated = searcher.search(queries, relative.in_memory_chunks(
      searcher, anchors[150:], offset=150, chunk_size=100), first)
  for other in (streamed, updated):
    np.testing.assert_array_equal(other.idx, idx)
    np.testing.assert_array_equal(other.sims, sims)
  # k = N keeps every anchor, in the brute force's order.
  full = searcher.search(queries[:5], relative.in_memory_chunks(searcher, anchors[:20]))
  np.testing.assert_array_equal(full.idx, brute_topk(queries[:5], anchors[:20], 20)[0])


@pytest.mark.parametrize("all_local", [True, False])
def test_host_top_k_skips_the_padding_query_rows(exact_data, monkeypatch, all_local):
  """37 queries in chunks of 16 are 48 rows on the devices; the 11 padding
  rows (zeros: they tie with every anchor, the top-k's slowest case) are
  never selected from, on a 2 x 4 mesh (query groups of 8 rows), with the
  local merge or the collective one."""
  queries, anchors = exact_data
  mesh = sharding.make_mesh((("queries", 2), ("data", 4)), devices=jax.devices()[:8])
  searcher = relative.Searcher(mesh, k=20, query_chunk=16, block=8)
  searcher.all_local = all_local
  rows = []
  real_top_k = host_topk.top_k_of_parts
  monkeypatch.setattr(host_topk, "top_k_of_parts",
                      lambda parts, *a, **kw: rows.append(len(parts[0][0])) or
                      real_top_k(parts, *a, **kw))
  res = searcher.search(queries, relative.in_memory_chunks(searcher, anchors))
  # One selection per real row (local), or per real row and anchor device.
  assert sum(rows) == 37 * (1 if all_local else 4)
  idx, sims = brute_topk(queries, anchors, 20)
  np.testing.assert_array_equal(res.idx, idx)
  np.testing.assert_array_equal(res.sims, sims)


def test_collective_merge_follows_a_query_chunk_set_after_construction(exact_data):
  """The Asif class sets query_chunk per search, after the Searcher is made:
  the host dots' blocks for the collective merge (2 x 4 mesh, as across
  hosts) take their query groups' rows from the chunk searched with."""
  queries, anchors = exact_data
  mesh = sharding.make_mesh((("queries", 2), ("data", 4)), devices=jax.devices()[:8])
  searcher = relative.Searcher(mesh, k=20, query_chunk=16, block=8)
  searcher.all_local = False
  searcher.query_chunk = 32
  res = searcher.search(queries, relative.in_memory_chunks(searcher, anchors))
  idx, sims = brute_topk(queries, anchors, 20)
  np.testing.assert_array_equal(res.idx, idx)
  np.testing.assert_array_equal(res.sims, sims)


@pytest.fixture(scope="module")
def random_data():
  rng = np.random.default_rng(1)
  return _unit(rng.standard_normal((45, 16))), _unit(rng.standard_normal((331, 16)))


def test_sharded_streamed_and_incremental_are_bit_identical(random_data):
  queries, anchors = random_data
  k = 24

  def run(num_devices, chunk_size=0, splits=(), axes=(("data", -1),), top_k="auto",
          all_local=True, xla_dots=False):
    mesh = sharding.make_mesh(axes, devices=jax.devices()[:num_devices])
    searcher = relative.Searcher(mesh, k, query_chunk=16, block=8, top_k=top_k)
    searcher.all_local = all_local  # False: the multi-host path's collective merge
    # True: the program's dots with the host top-k, as on an accelerator
    # with top_k="host".
    searcher.on_cpu = not xla_dots
    bounds = [0, *splits, len(anchors)]
    res = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # each piece: an anchor-set update
      res = searcher.search(queries, relative.in_memory_chunks(
          searcher, anchors[lo:hi], offset=lo, chunk_size=chunk_size), res)
    return res

  ref = run(1)
  variants = {"8 devices": run(8), "streamed, 1 device": run(1, chunk_size=40),
              "streamed, 8 devices": run(8, chunk_size=70),
              "incremental": run(8, splits=(130,)),
              "incremental x3, streamed": run(1, chunk_size=50, splits=(30, 200)),
              # Query rows split too: 2 query groups x 4 anchor devices, or 8 x 1.
              "2 x 4 mesh, streamed": run(8, chunk_size=70, axes=(("queries", 2), ("data", 4))),
              "8 query groups": run(8, axes=(("queries", 8),)),
              "collective merge, 2 x 4 mesh, streamed, incremental":
                  run(8, chunk_size=70, splits=(130,), axes=(("queries", 2), ("data", 4)),
                      all_local=False)}
  for name, res in variants.items():
    np.testing.assert_array_equal(res.idx, ref.idx, err_msg=name)
    np.testing.assert_array_equal(res.sims, ref.sims, err_msg=name)
    assert res.num_anchors == len(anchors)
  # The dots in XLA and lax.top_k in the program (the accelerators' path)
  # are bit-identical among themselves, and the host top-k on the
  # program's similarities gives lax.top_k's rows; against the host's BLAS,
  # the same neighbours with similarities equal to float32 rounding.
  xla = run(1, top_k="xla")
  others = {"xla, 2 x 4 mesh, streamed":
                run(8, chunk_size=70, top_k="xla", axes=(("queries", 2), ("data", 4))),
            "program's dots, host top-k, 2 x 4 mesh, incremental":
                run(8, splits=(130,), axes=(("queries", 2), ("data", 4)), top_k="host",
                    xla_dots=True),
            "program's dots, host top-k, collective merge, 2 x 4 mesh, streamed":
                run(8, chunk_size=70, axes=(("queries", 2), ("data", 4)), top_k="host",
                    all_local=False, xla_dots=True)}
  for name, res in others.items():
    np.testing.assert_array_equal(res.idx, xla.idx, err_msg=name)
    np.testing.assert_array_equal(res.sims, xla.sims, err_msg=name)
  idx, sims = brute_topk(queries, anchors, k)
  for res in (ref, xla):
    np.testing.assert_array_equal(res.idx, idx)
    np.testing.assert_allclose(res.sims, sims, atol=1e-6)


def test_host_dots_are_the_blas_products_and_leave_its_threads_as_they_were(random_data):
  """On CPU devices the host computes the similarities (query chunk x
  runs of at least `block` anchors, by NumPy's BLAS): each kept similarity is the
  product of its query and anchor to float32 rounding, masked columns
  never come out, and the BLAS's thread count is the user's again after."""
  queries, anchors = random_data
  before = [(i["prefix"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
  searcher = relative.Searcher(_mesh(8), k=24, query_chunk=16, block=8)
  res = searcher.search(queries, relative.in_memory_chunks(searcher, anchors, chunk_size=70))
  assert [(i["prefix"], i["num_threads"]) for i in threadpoolctl.threadpool_info()] == before
  expect = np.einsum("qd,qkd->qk", queries.astype(np.float64), anchors[res.idx].astype(np.float64))
  np.testing.assert_allclose(res.sims, expect, atol=1e-6)
  assert (res.idx >= 0).all() and (res.idx < len(anchors)).all()


def test_host_dot_pieces_cover_each_own_column_once_in_products_of_at_least_a_block():
  """The host dots' products: a device's own columns in about equal pieces
  of about 1/parts of all the columns, none narrower than the block, no
  column in two; a device with fewer than a block of its own gets one
  block over its masked rows."""
  a, b, c = (np.zeros((10_000, 4), np.float32) for _ in range(3))

  def cut(ranges, block, parts):
    return [(next(n for n, r in enumerate(ranges) if r[0] is p[0]), p[2], p[3])
            for p in host_dots._pieces(  # pylint: disable=protected-access
                [(x, None, lo, hi) for x, lo, hi in ranges], block, parts)]

  assert cut([(a, 0, 10_000), (b, 0, 10_000)], 1024, 4) == [
      (0, 0, 5000), (0, 5000, 10_000), (1, 0, 5000), (1, 5000, 10_000)]
  # A chunk's end: b has 300 of its own, c its last 200 rows (its rows start
  # before its own); each is one block, c's ending at its last row.
  assert cut([(a, 0, 10_000), (b, 0, 300), (c, 9800, 10_000)], 1024, 4) == [
      (0, 0, 2500), (0, 2500, 5000), (0, 5000, 7500), (0, 7500, 10_000),
      (1, 0, 1024), (2, 8976, 10_000)]
  # Fewer pieces than parts where a piece would be narrower than the block.
  assert cut([(a, 0, 1500)], 1024, 4) == [(0, 0, 1500)]
  assert cut([(a, 3, 1003)], 256, 3) == [(0, 3, 336), (0, 336, 669), (0, 669, 1003)]


def test_host_dots_give_a_similarity_the_same_bits_in_products_of_any_width():
  """The similarity rows of 160 queries (one step, d = 64) against 2,300
  anchors are the same bits whatever products the host dots cut them into:
  1, 2 and 8 devices, streamed chunks (700 anchors, the last of 200), and
  blocks of 16 and 512 (on 8 devices a device of 252 own anchors then
  computes 512); and the brute force's top-k."""
  rng = np.random.default_rng(5)
  queries, anchors = _unit(rng.standard_normal((160, 64))), _unit(rng.standard_normal((2300, 64)))
  runs = {}
  for devices, block, chunk in [(1, 16, 0), (2, 16, 0), (8, 16, 0), (2, 16, 700), (8, 512, 0)]:
    searcher = relative.Searcher(_mesh(devices), k=40, block=block)
    runs[devices, block, chunk] = searcher.search(
        queries, relative.in_memory_chunks(searcher, anchors, chunk_size=chunk))
  first = runs[1, 16, 0]
  for key, res in runs.items():
    np.testing.assert_array_equal(res.idx, first.idx, err_msg=str(key))
    np.testing.assert_array_equal(res.sims.view(np.uint32), first.sims.view(np.uint32),
                                  err_msg=str(key))
  np.testing.assert_array_equal(first.idx, brute_topk(queries, anchors, 40)[0])


def test_host_dots_steps_are_equal_and_their_buffer_is_kept_for_the_next_search(monkeypatch):
  """On CPU devices n query rows are searched in steps as equal as
  query_chunk allows, with no padding rows to compute (1000 queries: one
  step of 1000, not 1024), but of at least 128 rows; a query's row is the
  same whatever rows it was searched with (the BLAS's bits in products of
  128 to 1024 rows); and the Searcher's similarity buffer serves its next
  search."""
  rng = np.random.default_rng(4)
  queries, anchors = _unit(rng.standard_normal((1000, 48))), _unit(rng.standard_normal((3000, 48)))
  steps, chunk_blocks = [], host_dots.chunk_blocks
  monkeypatch.setattr(host_dots, "chunk_blocks",
                      lambda q, *args: steps.append(len(q)) or chunk_blocks(q, *args))
  searcher = relative.Searcher(_mesh(2), k=30)
  full = searcher.search(queries, relative.in_memory_chunks(searcher, anchors))
  buffer = searcher._buffers["sims"]  # pylint: disable=protected-access
  runs = {n: searcher.search(queries[:n], relative.in_memory_chunks(searcher, anchors))
          for n in (150, 5)}
  assert searcher._buffers["sims"] is buffer  # pylint: disable=protected-access
  halves = relative.Searcher(_mesh(2), k=30, query_chunk=512)
  runs[1000] = halves.search(queries, relative.in_memory_chunks(halves, anchors))
  assert steps == [1000, 150, 128, 500, 500]
  for n, res in runs.items():
    np.testing.assert_array_equal(res.idx, full.idx[:n], err_msg=str(n))
    np.testing.assert_array_equal(res.sims, full.sims[:n], err_msg=str(n))
  np.testing.assert_array_equal(full.idx, brute_topk(queries, anchors, 30)[0])
  assert [host_dots.step_rows(n, most, multiple) for n, most, multiple in
          [(1025, 1024, 2), (10_000, 1024, 8), (1, 8, 8), (300, 1024, 3)]] == [514, 1000, 8, 300]


def test_side_by_side_parts_are_joined_only_where_they_are_one_array():
  """The host top-k selects from parts lying side by side in one array,
  with consecutive indices, as one read-only view; anything else stays apart."""
  buf = np.arange(40, dtype=np.float32).reshape(4, 10)
  a, b, c = buf[:, :3], buf[:, 3:7], buf[:, 7:]
  (joined, first), = host_topk._side_by_side([(a, 5), (b, 8), (c, 12)])  # pylint: disable=protected-access
  assert first == 5 and np.array_equal(joined, buf) and not joined.flags.writeable
  for parts in ([(a, 0), (c, 3)],  # a gap between them
                [(a, 0), (b, 4)],  # indices not consecutive
                [(a, 0), (b.copy(), 3)],  # another array
                [(buf[:2, :3], 0), (buf[2:, 3:7], 3)],  # other rows
                [(buf[:2, 7:], 0), (buf[1:, :3], 3)]):  # adjacent in memory, other row counts
    assert len(host_topk._side_by_side(parts)) == 2  # pylint: disable=protected-access


def test_default_block_on_cpu_gives_the_rows_of_any_other_block():
  """block=0 is 1024 anchors per dot on CPU devices; the rows are those of a
  4096 block and of a 256 one, bit for bit (3,000 anchors on 2 devices: at
  4096 one device holds them all, in one product of 4096 with its padding;
  at 1024 one product of 1,500 a device; at 256 two of 750), and the brute
  force's."""
  rng = np.random.default_rng(3)
  queries, anchors = _unit(rng.standard_normal((40, 48))), _unit(rng.standard_normal((3000, 48)))
  runs = {}
  for block in (0, 4096, 256):
    searcher = relative.Searcher(_mesh(2), k=30, query_chunk=16, block=block)
    runs[block] = searcher.search(queries, relative.in_memory_chunks(searcher, anchors))
  assert relative.Searcher(_mesh(2), k=30).block == 1024 == relative.default_block("cpu")
  for block in (4096, 256):
    np.testing.assert_array_equal(runs[block].idx, runs[0].idx, err_msg=str(block))
    np.testing.assert_array_equal(runs[block].sims, runs[0].sims, err_msg=str(block))
  np.testing.assert_array_equal(runs[0].idx, brute_topk(queries, anchors, 30)[0])


def test_asif_api_add_anchors_is_an_update(random_data):
  queries, anchors = random_data
  model = Asif(anchors[:100], anchors[:100, :12], [f"c{i}" for i in range(100)], k=24,
               mesh=_mesh(8), query_chunk=16, block=8)
  before = model.represent(queries, "image")
  model.add_anchors(anchors[100:], anchors[100:, :12], [f"c{i}" for i in range(100, 331)])
  updated = model.represent(queries, "image", before)
  fresh = model.represent(queries, "image")
  np.testing.assert_array_equal(updated.idx, fresh.idx)
  np.testing.assert_array_equal(updated.sims, fresh.sims)
  with pytest.raises(UserError, match="as many images as texts"):
    model.add_anchors(anchors[:3], anchors[:2, :12], ["a", "b", "c"])
  with pytest.raises(UserError, match="do not match the anchors' dimension 16"):
    model.add_anchors(anchors[:2, :8], anchors[:2, :12], ["a", "b"])
  with pytest.raises(UserError, match="do not match the anchors' dimension"):
    model.represent(queries[:, :8], "image")


def test_search_rejects_bad_sizes(random_data):
  queries, anchors = random_data
  searcher = relative.Searcher(_mesh(8), k=50, query_chunk=16, block=8)
  with pytest.raises(UserError, match=r"k=50 is larger than the number of anchors \(40\)"):
    searcher.search(queries, relative.in_memory_chunks(searcher, anchors[:40]))
  with pytest.raises(UserError, match="query_chunk=12 must be a positive multiple of the "
                     r"number of devices \(8\)"):
    relative.Searcher(_mesh(8), k=5, query_chunk=12)
  with pytest.raises(UserError, match=r"top_k='fast' is not one of \['auto', 'host', 'xla'\]"):
    relative.Searcher(_mesh(8), k=5, top_k="fast")
  with pytest.raises(UserError, match=r"anchor_block=-1 must be positive \(or 0"):
    relative.Searcher(_mesh(8), k=5, block=-1)


def _brute(s, k):
  """(value desc, index asc) in XLA:CPU's total order of floats: +0 before -0."""
  order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), np.signbit(s), -s),
                     axis=1)[:, :k]
  return np.take_along_axis(s, order, 1), order


def test_aligned_arrays_are_used_as_they_are():
  """Anchors in 64-byte aligned memory are placed without a copy on CPU
  devices; anything else gets one aligned copy of the same values."""
  x = relative.aligned_empty((100, 48))
  assert x.ctypes.data % 64 == 0 and x.flags.c_contiguous and x.dtype == np.float32
  x[...] = np.random.default_rng(0).standard_normal(x.shape)
  assert relative.aligned(x) is x
  for other in (x[1:], x[:, :40], x.astype(np.float64), x.T):
    y = relative.aligned(other)
    assert y.ctypes.data % 64 == 0 and y.flags.c_contiguous and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.asarray(other, np.float32))
  searcher = relative.Searcher(_mesh(2), k=5, block=8)
  # 99 anchors on 2 devices: 50 rows each (48 floats a row keep any row
  # aligned), the last one past the anchors' end.
  chunk = searcher.place(lambda a, b: x[a:b], 0, 99, 48)
  placed = np.asarray(chunk.data)
  assert placed.shape == (100, 48)
  np.testing.assert_array_equal(placed[:99], x[:99])
  np.testing.assert_array_equal(placed[99:], 0.0)  # the padding (a copy of 50-98)
  # An in-memory array: the last device takes the array's last 50 rows (49-98,
  # 49 masked as device 0's) in place of a zero-padded copy of 50-98.
  chunk = next(relative.in_memory_chunks(searcher, x[:99]))
  np.testing.assert_array_equal(chunk.starts, [0, 49])
  for shard in sorted(chunk.data.addressable_shards, key=lambda s: s.index[0].start):
    first = int(chunk.starts[shard.index[0].start // 50])
    assert shard.data.unsafe_buffer_pointer() == x.ctypes.data + first * 48 * 4  # a view
  # 10 floats a row: 8 rows keep a row 64-byte aligned, so L rounds up to 56.
  assert searcher.chunk_rows(99, 10) == 112 and searcher.chunk_rows(99, 48) == 100
  assert searcher.chunk_rows(3, 48) == 16  # at least a block per device


def _assert_is_the_exact_top_k(s, k, **kwargs):
  vals, pos = host_topk.exact_top_k(s, k, **kwargs)
  ref_vals, ref_pos = _brute(s, k)
  np.testing.assert_array_equal(pos, ref_pos)
  np.testing.assert_array_equal(vals, ref_vals)
  assert pos.dtype == np.int32 and vals.dtype == np.float32
  lax_vals, lax_pos = jax.lax.top_k(s, k)
  np.testing.assert_array_equal(pos, lax_pos)
  np.testing.assert_array_equal(vals, lax_vals)


@pytest.mark.parametrize("k", [1, 5, 40, 64])
def test_exact_top_k_equals_a_full_sort_and_lax_top_k(k):
  """Rows with ties across the cut, ties among the kept, -inf padding, k = n."""
  rng = np.random.default_rng(3)
  s = rng.integers(-3, 4, (40, 64)).astype(np.float32)      # few values: ties everywhere
  s[:10] = rng.standard_normal((10, 64)).astype(np.float32)  # no ties
  s[10:15, 50:] = -np.inf                                    # padding
  s[15, :] = 1.0                                             # one value
  s[16, :] = -np.inf
  s[17, ::2], s[17, 1::2] = -0.0, 0.0                        # +0 ranks above -0, as in lax.top_k
  s[18, :32] = np.where(rng.random(32) < 0.5, -0.0, 0.0)
  _assert_is_the_exact_top_k(s, k)


@pytest.mark.parametrize("k, stride", [(1, 4), (20, 4), (20, 16), (64, 8)])
def test_threshold_top_k_equals_a_full_sort_and_lax_top_k(k, stride):
  """The sampled-threshold path (rows long against k), and each of its ways
  to the partition path: a sample that sets the threshold too high, a row of
  ties, -inf padding."""
  rng = np.random.default_rng(4)
  s = rng.standard_normal((48, 4096)).astype(np.float32)
  s[10:20] = rng.integers(-40, 40, (10, 4096))                # ties across the cut and among the kept
  s[20:24, 1000:] = -np.inf                                  # padding
  s[24, :] = 1.0                                             # one value
  s[25, :] = -np.inf
  s[34:36] = np.where(rng.random((2, 4096)) < 0.5, -0.0, 0.0)  # +0 before -0
  s[26:30, ::stride] += 100.0                                # the sample sees only the largest
  s[30:34, ::stride] -= 100.0                                # ... or only the smallest
  _assert_is_the_exact_top_k(s, k, stride=stride)


@pytest.mark.parametrize("share", [0.0, 0.01, 0.034, 0.05, 0.0999, 0.1, 0.1001, 0.5, 1.0])
def test_flat_at_or_above_is_flatnonzero_at_every_share(share):
  """The padded nonzero (3-10% kept) and the plain one, against NumPy's."""
  rng = np.random.default_rng(6)
  v = rng.random((37, 1001)).astype(np.float32)
  thr = np.quantile(v, 1 - share, axis=1, keepdims=True).astype(np.float32)
  thr[3] = -np.inf   # every entry of a row
  thr[4] = np.inf    # none
  got = host_topk._flat_at_or_above(v, thr)
  np.testing.assert_array_equal(got, np.flatnonzero(v >= thr))
  # A column slice (a device's masked columns left out) is not contiguous.
  np.testing.assert_array_equal(host_topk._flat_at_or_above(v[:, 7:900], thr),
                                np.flatnonzero(v[:, 7:900] >= thr))


@pytest.mark.parametrize("k, stride", [(20, 4), (20, 16), (100, 8), (3500, 4)])
def test_top_k_of_parts_equals_the_top_k_of_the_concatenated_row(k, stride):
  """A running top-k's carry (its own indices, sorted by value then index)
  and three anchor blocks, ties within and across them: the top-k of the
  concatenated row by (value desc, index asc), the threshold path's ways to
  the partition path included, and rows shorter than k (3500 > 3400) filled
  with (-inf, -1). k <= 500 leaves out of the carry only values that cannot
  be in the top-k, as a real carry does."""
  rng = np.random.default_rng(5)
  s = rng.integers(-60, 60, (40, 2900)).astype(np.float32)   # ties everywhere
  s[:10] = rng.standard_normal((10, 2900)).astype(np.float32)
  s[10:14, ::stride] += 100.0                                # an unlucky sample
  s[14, :] = 1.0                                             # one value
  lower = rng.integers(-60, 60, (40, 500)).astype(np.float32)  # anchors 0-499
  carry = _brute(lower, min(k, 500))                          # the carry: their top-k
  parts = [(carry[0], carry[1].astype(np.int32)), (s[:, :1200], 500),
           (s[:, 1200:1201], 1700), (s[:, 1201:], 1701)]
  vals, idx = host_topk.top_k_of_parts(parts, k, stride=stride)
  row = np.concatenate([lower, s], axis=1)
  ref_vals, ref_idx = _brute(row, min(k, row.shape[1]))
  if k > row.shape[1]:
    ref_vals = np.pad(ref_vals, ((0, 0), (0, k - row.shape[1])), constant_values=-np.inf)
    ref_idx = np.pad(ref_idx, ((0, 0), (0, k - row.shape[1])), constant_values=-1)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_array_equal(vals, ref_vals)
  assert idx.dtype == np.int32 and vals.dtype == np.float32


@pytest.fixture(scope="module")
def classes_data():
  """5 classes x 3 templates, anchors and queries near class centres, and a
  hub anchor (close to every prompt) that every text row keeps."""
  rng = np.random.default_rng(2)
  ci, ct = rng.standard_normal((5, 16)), rng.standard_normal((5, 12))
  a_cls, q_cls = rng.integers(0, 5, 400), rng.integers(0, 5, 60)
  image_anchors = _unit(ci[a_cls] + 1.2 * rng.standard_normal((400, 16)))
  text_anchors = _unit(ct[a_cls] + 1.2 * rng.standard_normal((400, 12)))
  # Prompts share a direction ("a photo of ..."), and so do hub anchors 7-11.
  shared = 2 * rng.standard_normal(12)
  text_anchors[7:12] = _unit(shared + 0.3 * rng.standard_normal((5, 12)))
  queries = _unit(ci[q_cls] + 1.2 * rng.standard_normal((60, 16)))
  prompts = _unit(np.repeat(ct, 3, 0) + shared + 0.7 * rng.standard_normal((15, 12)))
  return image_anchors, text_anchors, queries, prompts, q_cls


@pytest.mark.parametrize("num_devices, impl", [(1, "host"), (8, "host"), (1, "xla"), (8, "xla")])
def test_scores_and_predictions_equal_dense_numpy(classes_data, num_devices, impl):
  image_anchors, text_anchors, queries, prompts, labels = classes_data
  k, p = 30, 8
  searcher = relative.Searcher(_mesh(num_devices), k, query_chunk=16, block=8)
  image = searcher.search(queries, relative.in_memory_chunks(searcher, image_anchors))
  text = searcher.search(prompts, relative.in_memory_chunks(searcher, text_anchors))
  assert np.isin(np.arange(7, 12), text.idx).all(axis=None) and all(
      np.isin(np.arange(7, 12), row).all() for row in text.idx)  # hubs: in every text row
  scorer = scoring.Scorer(searcher.mesh, scoring.index_text(text, p), impl)
  assert scorer.impl == impl
  scores = scorer.scores(image, p)
  # The two joins add the same products in the same order: the same bits.
  other = scoring.Scorer(searcher.mesh, scoring.index_text(text, p),
                         {"host": "xla", "xla": "host"}[impl]).scores(image, p)
  np.testing.assert_array_equal(scores, other)
  ref = (dense_rep(queries, image_anchors, k, p, False)
         @ dense_rep(prompts, text_anchors, k, p, True).T)
  np.testing.assert_allclose(scores, ref, rtol=2e-5, atol=1e-6 * np.abs(ref).max())
  np.testing.assert_array_equal(scores.argmax(1), ref.argmax(1))
  # The reference rule (argmax over prompts, class = prompt // J) and the variant.
  np.testing.assert_array_equal(
      scoring.class_scores(scores, 3, "prompt_max").argmax(1), ref.argmax(1) // 3)
  np.testing.assert_array_equal(
      scoring.class_scores(scores, 3, "template_mean").argmax(1),
      ref.reshape(60, 5, 3).mean(2).argmax(1))
  # The synthetic classes are found far above chance (20%): the data are not trivial.
  assert np.mean(ref.argmax(1) // 3 == labels) > 0.4


def test_explain_sums_the_shared_anchors(classes_data):
  image_anchors, text_anchors, queries, prompts, _ = classes_data
  k, p = 30, 8
  searcher = relative.Searcher(_mesh(8), k, query_chunk=16, block=8)
  image = searcher.search(queries, relative.in_memory_chunks(searcher, image_anchors))
  text = searcher.search(prompts, relative.in_memory_chunks(searcher, text_anchors))
  ri = dense_rep(queries, image_anchors, k, p, False)
  rt = dense_rep(prompts, text_anchors, k, p, True)
  for row, prompt in [(0, 4), (11, int((ri[11] @ rt.T).argmax()))]:
    contrib = scoring.explain(image, row, text, prompt, p, top=k)
    ref = ri[row] * rt[prompt]
    shared = np.flatnonzero(ref)
    assert sorted(a for a, _ in contrib) == sorted(shared.tolist())
    for a, v in contrib:
      assert v == pytest.approx(ref[a], rel=1e-5)
    assert [v for _, v in contrib] == sorted((v for _, v in contrib), reverse=True)
    assert sum(v for _, v in contrib) == pytest.approx(ri[row] @ rt[prompt], rel=1e-5)
    assert len(scoring.explain(image, row, text, prompt, p, top=3)) == min(3, len(shared))


def test_class_rules_by_hand():
  # 2 classes x 2 templates; prompts 1 and 2 tie at the maximum.
  scores = np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 1.0, 4.0, -4.0]], np.float32)
  best = scoring.class_scores(scores, 2, "prompt_max")
  np.testing.assert_array_equal(best, [[3, 3], [1, 4]])
  assert best[0].argmax() == np.argmax(scores[0]) // 2 == 0  # first maximum, both ways
  np.testing.assert_array_equal(scoring.class_scores(scores, 2, "template_mean"),
                                [[2, 1.5], [0.5, 0]])
  with pytest.raises(UserError, match="rule='vote'"):
    scoring.class_scores(scores, 2, "vote")
