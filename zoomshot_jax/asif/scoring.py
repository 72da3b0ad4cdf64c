"""ASIF scores: sparse image rows times sparse text rows, and class decisions.

METHODS.md §3 (verified in noranta4/ASIF, relreps.py): with r_I(x) =
topk(x · A_I^T)^p (rows not normalised) and r_T(s) = norm(topk(s · A_T^T)^p),
sim(x, s) = r_I(x) · r_T(s)^T; the reference predicts the argmax over all
class x template prompts, class = prompt // J. Averaging the prompt scores
over templates first is the variant `rule="template_mean"`.

Why a join and not a matmul. Each row has k non-zeros out of N anchors, so
the dense product costs Q·P·N and a gather of text values per query entry
Q·P·k, while only about Q·P·k²/N (k = 800, N = 1.6M: 2,000x fewer) pairs of
non-zeros meet. We index the text rows by anchor (CSR: every prompt that
keeps anchor a, with its weight), and expand each query's k anchors into the
list of (prompt, weight) entries they hit — a static-length list of L slots,
L the step's largest hit count rounded up to a power of two —
then scatter-add the products into the [rows, P] scores. Work and memory are
O(rows · L), i.e. proportional to the pairs that meet, also when a few hub
anchors are kept by many prompts; the hit counts are measured on device
first, and rows are scored in order of their counts so that steps pad little.

On CPU devices the same join runs on the host instead (`impl="host"`):
SciPy's CSR x CSR product (Gustavson's row-by-row algorithm: for each image
row, each kept anchor's text entries are accumulated into the row's scores),
image rows split over the cores. It visits the same pairs in the same order
as the program's slots (the row's anchors in top-k order, each anchor's
prompts ascending), so both give the same float32 sums, and it is 5-8x
faster there: XLA:CPU's scatter-add runs on one thread.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from zoomshot_jax import sharding
from zoomshot_jax.asif import host_topk
from zoomshot_jax.asif.relative import ROWS, TopK, search_mesh
from zoomshot_jax.errors import UserError

RULES = ("prompt_max", "template_mean")
IMPLS = ("auto", "host", "xla")
# Rows x slots of one scoring step (int32 and float32 temporaries of this size).
_SLOT_BUDGET = 1 << 24


def weights(topk: TopK, p: float, normalize: bool) -> np.ndarray:
  """Relative-representation values sims^p [n, k]; rows L2-normalised if asked.

  The reference raises the kept similarities to p as they are (an even p
  makes a negative similarity positive, as there) and normalises text rows.
  """
  w = np.power(topk.sims.astype(np.float64), p)
  if normalize:
    w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-30)
  return w.astype(np.float32)


@dataclasses.dataclass
class TextIndex:
  """Text relative representations indexed by anchor (CSR).

  row_ptr: [N + 1] int32; the entries of anchor a are [row_ptr[a], row_ptr[a+1]).
  prompt: [E] int32 prompt of each entry; weight: [E] float32 its value in r_T.
  """

  row_ptr: np.ndarray
  prompt: np.ndarray
  weight: np.ndarray
  num_prompts: int


def index_text(text: TopK, p: float) -> TextIndex:
  """CSR of the text rows' r_T = norm(sims^p) over anchors [0, num_anchors)."""
  w = weights(text, p, normalize=True)
  # The [P, N] CSR of the rows, transposed by SciPy's counting sort
  # (csr_tocsc: O(P k + N), each anchor's prompts ascending, the order a
  # stable sort by anchor gives; at 1k prompts x 800 a fifth of its time).
  by_anchor = _rows_csr(w, text.idx, text.num_anchors).tocsc()
  return TextIndex(row_ptr=by_anchor.indptr.astype(np.int32, copy=False),
                   prompt=by_anchor.indices.astype(np.int32, copy=False),
                   weight=by_anchor.data.astype(np.float32, copy=False),
                   num_prompts=text.idx.shape[0])


def _rows_csr(w: np.ndarray, idx: np.ndarray, num_anchors: int) -> scipy.sparse.csr_matrix:
  """Top-k rows (k entries each: weights w, anchors idx) as an [n, N] CSR."""
  n, k = idx.shape
  return scipy.sparse.csr_matrix((w.reshape(-1), idx.reshape(-1), np.arange(0, n * k + 1, k)),
                                 shape=(n, num_anchors))


@functools.lru_cache(maxsize=None)
def _score_program(mesh: Mesh, slots: int, num_prompts: int):
  """[R, k] image rows (weights, anchors) -> [R, P] scores, with L = `slots`."""

  def score(row_ptr, prompt, weight, w_img, idx):
    rows = jnp.arange(idx.shape[0])[:, None]
    start = row_ptr[idx]                                   # [R, k]
    count = row_ptr[idx + 1] - start
    last = jnp.cumsum(count, axis=1)
    first = last - count                                   # entry j fills slots [first, last)
    # Slot t belongs to the last entry with first <= t: mark each entry's
    # first slot and count the marks (entries that hit nothing share the
    # next one's first slot and are passed over).
    marks = jnp.zeros((idx.shape[0], slots + 1), jnp.int32).at[rows, first].add(1)
    j = jnp.cumsum(marks[:, :slots], axis=1) - 1           # [R, L]
    t = jnp.arange(slots, dtype=jnp.int32)[None, :]
    valid = t < last[:, -1:]
    e = jnp.where(valid, jnp.take_along_axis(start - first, j, 1) + t, 0)
    target = jnp.where(valid, prompt[e], num_prompts)     # out of range: dropped
    value = weight[e] * jnp.take_along_axis(w_img, j, 1)
    return jnp.zeros((idx.shape[0], num_prompts), jnp.float32).at[rows, target].add(
        value, mode="drop")

  rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, ROWS)
  return jax.jit(score, in_shardings=(rep, rep, rep, rows, rows), out_shardings=rows)


@functools.lru_cache(maxsize=None)
def _hits_program(mesh: Mesh):
  """Per image row, the number of (anchor, prompt) entries its anchors hit."""
  rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, ROWS)
  return jax.jit(lambda rp, idx: (rp[idx + 1] - rp[idx]).sum(axis=1),
                 in_shardings=(rep, rows), out_shardings=rows)


class Scorer:
  """sim(x, s) for all image rows x and prompts s, row-sharded over the mesh.

  impl: "xla" (the join as a program, rows sharded over the mesh), "host"
  (SciPy on this host's cores; every host scores all rows, which costs a
  fraction of a second next to the search) or "auto": host on CPU devices.
  """

  def __init__(self, mesh: Mesh, text: TextIndex, impl: str = "auto"):
    self.mesh = search_mesh(mesh)
    self.num_devices = self.mesh.devices.size
    self.text = text
    if impl not in IMPLS:
      raise UserError(f"scoring={impl!r} is not one of {list(IMPLS)}.")
    if impl == "auto":
      impl = "host" if self.mesh.devices.flat[0].platform == "cpu" else "xla"
    self.impl = impl
    if impl == "host":
      # Text rows by anchor: [N, P] in CSR, exactly the index's arrays.
      self._text_csr = scipy.sparse.csr_matrix(
          (text.weight, text.prompt, text.row_ptr),
          shape=(text.row_ptr.shape[0] - 1, text.num_prompts))
      return
    rep = NamedSharding(self.mesh, P())
    self.rows = NamedSharding(self.mesh, ROWS)
    self._row_ptr = sharding.place(text.row_ptr, rep)
    self._prompt = sharding.place(text.prompt, rep)
    self._weight = sharding.place(text.weight, rep)

  def _host_scores(self, image: TopK, w: np.ndarray) -> np.ndarray:
    n = image.idx.shape[0]
    step = max(256, math.ceil(n / host_topk.host_cores()))

    def rows(lo):
      hi = min(n, lo + step)
      return (_rows_csr(w[lo:hi], image.idx[lo:hi], image.num_anchors) @ self._text_csr).toarray()

    parts = list(host_topk.pool().map(rows, range(0, n, step)))
    return (np.concatenate(parts) if parts else
            np.zeros((0, self.text.num_prompts), np.float32)).astype(np.float32, copy=False)

  def scores(self, image: TopK, p: float) -> np.ndarray:
    """[n, P] float32 sim(x, s) = r_I(x) · r_T(s) for every image row and prompt."""
    if image.num_anchors != self.text.row_ptr.shape[0] - 1:
      raise ValueError(f"image rows searched {image.num_anchors} anchors, text rows "
                       f"{self.text.row_ptr.shape[0] - 1}")
    if self.impl == "host":
      return self._host_scores(image, weights(image, p, normalize=False))
    n, d = image.idx.shape[0], self.num_devices
    padded = math.ceil(n / d) * d
    idx = np.zeros((padded, image.k), np.int32)
    idx[:n] = image.idx
    w = np.zeros((padded, image.k), np.float32)
    w[:n] = weights(image, p, normalize=False)
    hits = sharding.fetch_global(
        _hits_program(self.mesh)(self._row_ptr, sharding.place(idx, self.rows)))
    # Rows in order of their hit counts, so that each step pads little; a
    # step's shape (rows, slots) is a power of two each: few compilations.
    order = np.argsort(hits, kind="stable")
    out = np.zeros((padded, self.text.num_prompts), np.float32)
    lo = 0
    while lo < padded:
      # The most rows the budget allows at this narrowest width, no more than
      # are left; then the width these rows need, and fewer rows if too wide.
      rows = min(_pow2(_SLOT_BUDGET // _pow2(int(hits[order[lo]]))), _pow2(padded - lo))
      rows = max(d, rows // d * d)
      slots = _pow2(int(hits[order[min(padded, lo + rows) - 1]]))
      if rows * slots > _SLOT_BUDGET:
        rows = max(d, _pow2(_SLOT_BUDGET // slots) // d * d)
      sel = order[lo:lo + rows]
      lo += len(sel)
      sel = np.concatenate([sel, np.repeat(sel[-1:], rows - len(sel))])  # pad: one shape
      res = _score_program(self.mesh, slots, self.text.num_prompts)(
          self._row_ptr, self._prompt, self._weight, sharding.place(w[sel], self.rows),
          sharding.place(idx[sel], self.rows))
      out[sel] = sharding.fetch_global(res)
    return out[:n]


def _pow2(x: int) -> int:
  """The smallest power of two >= max(x, 1)."""
  return 1 << max(0, int(x) - 1).bit_length()


def class_scores(prompt_scores: np.ndarray, num_templates: int, rule: str) -> np.ndarray:
  """[n, K * J] class-major prompt scores -> [n, K] class scores.

  `prompt_max`: the best template per class, so argmax over classes is the
  reference's argmax over prompts // J (first maximum on ties, both ways).
  `template_mean`: the mean over a class's templates.
  """
  if rule not in RULES:
    raise UserError(f"rule={rule!r} is not one of {list(RULES)}.")
  n, num_prompts = prompt_scores.shape
  s = prompt_scores.reshape(n, num_prompts // num_templates, num_templates)
  return s.max(axis=2) if rule == "prompt_max" else s.mean(axis=2, dtype=np.float64).astype(
      np.float32)


def explain(image: TopK, row: int, text: TopK, prompt: int, p: float,
            top: int = 10) -> list[tuple[int, float]]:
  """The anchors that contribute most to sim(image row, prompt).

  Each anchor a kept by both rows adds r_I(x)_a · r_T(s)_a to the score (an
  ASIF dimension is an anchor pair). Returns up to `top` (anchor index,
  contribution) pairs, largest first; the contributions of all shared
  anchors sum to the score.
  """
  w_img = weights(TopK(image.sims[row:row + 1], image.idx[row:row + 1], image.num_anchors),
                  p, normalize=False)[0]
  w_txt = weights(TopK(text.sims[prompt:prompt + 1], text.idx[prompt:prompt + 1],
                       text.num_anchors), p, normalize=True)[0]
  shared, i_img, i_txt = np.intersect1d(image.idx[row], text.idx[prompt], return_indices=True)
  contrib = w_img[i_img] * w_txt[i_txt]
  order = np.lexsort((shared, -contrib))[:top]
  return [(int(shared[o]), float(contrib[o])) for o in order]
