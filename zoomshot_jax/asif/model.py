"""ASIF in a few lines, on embeddings in memory (notebooks, demos).

  from zoomshot_jax.asif import Asif
  model = Asif(image_anchors, text_anchors, captions, k=800, p=8)   # [N, m], [N, t]
  scores = model.classify(image_emb, prompt_emb, num_templates=1)  # [n, K]
  model.explain(image_emb[0], prompt_emb[int(scores[0].argmax())])  # [(index, caption, share)]
  rows = model.represent(image_emb, "image")       # sparse top-k rows
  model.add_anchors(more_images, more_texts, more_captions)          # a data update
  rows = model.represent(image_emb, "image", rows)  # searches only the new anchors

All embeddings are L2-normalised here (the encoders' raw features may be
passed). Anchors stay on the host and are put on the mesh per search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoomshot_jax import compile_cache, sharding
from zoomshot_jax.asif import scoring
from zoomshot_jax.asif.relative import Searcher, TopK, aligned_empty, in_memory_chunks
from zoomshot_jax.errors import UserError

_SIMS_BUDGET = 1 << 30  # bytes of similarities per search step, over all devices


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Asif:
  """Anchors of two modalities, searched exactly on a device mesh.

  On CPU devices its Searcher keeps the last search's similarity buffer
  (query rows per step x anchors; about _SIMS_BUDGET at most unless
  query_chunk is given) for the next search, until the model is dropped.
  """

  def __init__(self, image_anchors, text_anchors, captions: Sequence[str] | None = None,
               k: int = 800, p: float = 8, mesh=None, query_chunk: int | None = None,
               block: int = 0, top_k: str = "auto", scoring_impl: str = "auto",
               compilation_cache: str = ""):
    # jax's persistent compilation cache, as every binary has it (a directory,
    # "" = the user cache dir, "none" = off; one the user set in jax is kept):
    # the first call in a new session then loads its programs instead of
    # compiling them, which at tens of thousands of anchors is most of it.
    compile_cache.setup_unless_set(compilation_cache)
    self.k, self.p, self.scoring_impl = k, p, scoring_impl
    mesh = mesh or sharding.make_mesh([("data", -1)])
    self._fixed_chunk = query_chunk
    self.searcher = Searcher(mesh, k, query_chunk or mesh.devices.size, block, top_k)
    self.anchors = {"image": np.zeros((0, np.shape(image_anchors)[-1]), np.float32),
                    "text": np.zeros((0, np.shape(text_anchors)[-1]), np.float32)}
    self.captions: list[str] = []
    self.add_anchors(image_anchors, text_anchors, captions)

  @property
  def num_anchors(self) -> int:
    return len(self.captions)

  def add_anchors(self, image, text, captions: Sequence[str] | None = None) -> None:
    """Appends anchor pairs (indices continue after the current ones)."""
    image, text = _normalize(image), _normalize(text)
    captions = list(captions) if captions is not None else [""] * len(image)
    if not len(image) == len(text) == len(captions):
      raise UserError(f"anchor pairs need as many images as texts (and captions): got "
                      f"{len(image)} image and {len(text)} text embeddings and "
                      f"{len(captions)} captions.")
    for kind, x in (("image", image), ("text", text)):
      if x.ndim != 2 or x.shape[1] != self.anchors[kind].shape[1]:
        raise UserError(f"{kind} anchor embeddings of shape {x.shape} do not match the "
                        f"anchors' dimension {self.anchors[kind].shape[1]}.")
      # Aligned: every search places them on CPU devices without a copy.
      old = self.anchors[kind]
      self.anchors[kind] = aligned_empty((len(old) + len(x), old.shape[1]))
      self.anchors[kind][:len(old)], self.anchors[kind][len(old):] = old, x
    self.captions += captions

  def represent(self, x, kind: str, previous: TopK | None = None) -> TopK:
    """Exact top-k rows of `x` [n, d] against the `kind` anchors.

    With `previous` (rows of the same x computed before anchors were added),
    only the anchors added since are searched and merged in.
    """
    x = _normalize(x)
    if x.ndim != 2 or x.shape[1] != self.anchors[kind].shape[1]:
      raise UserError(f"{kind} embeddings of shape {x.shape} do not match the anchors' "
                      f"dimension {self.anchors[kind].shape[1]}; embed them with the "
                      "anchors' encoder.")
    start = previous.num_anchors if previous is not None else 0
    if start == self.num_anchors:
      return previous
    if not self._fixed_chunk:
      # As many query rows per step as keep the similarity buffer near
      # _SIMS_BUDGET (all anchors are on the mesh at once here), up to 1024:
      # large steps keep the dots efficient, and 1.6M anchors still fit.
      d = self.searcher.num_devices
      rows = _SIMS_BUDGET // (4 * self.searcher.chunk_rows(
          self.num_anchors - start, self.anchors[kind].shape[1]))
      self.searcher.query_chunk = max(d, min(1024, rows) // d * d)
    chunks = in_memory_chunks(self.searcher, self.anchors[kind], start=start)
    return self.searcher.search(x, chunks, previous)

  def scores(self, images: TopK, prompts: TopK) -> np.ndarray:
    """sim(x, s) [n, P] of image rows against prompt rows (METHODS.md §3)."""
    scorer = scoring.Scorer(self.searcher.mesh, scoring.index_text(prompts, self.p),
                            self.scoring_impl)
    return scorer.scores(images, self.p)

  def classify(self, images, prompts, num_templates: int = 1,
               rule: str = "prompt_max") -> np.ndarray:
    """Class scores [n, K] of image embeddings against class-major prompt embeddings [K * J, t]."""
    s = self.scores(self.represent(images, "image"), self.represent(prompts, "text"))
    return scoring.class_scores(s, num_templates, rule)

  def explain(self, image, prompt, top: int = 10) -> list[tuple[int, str, float]]:
    """(anchor index, caption, share of the score) of the anchors behind sim(image, prompt)."""
    img = self.represent(np.reshape(image, (1, -1)), "image")
    txt = self.represent(np.reshape(prompt, (1, -1)), "text")
    contrib = scoring.explain(img, 0, txt, 0, self.p, top)
    total = float(self.scores(img, txt)[0, 0])
    return [(a, self.captions[a], v / total if total else 0.0) for a, v in contrib]

