"""The anchor store: embedded image–caption pairs on disk, in shards, with a manifest.

  <dir>/manifest.json        encoders, sources ("parts"), shard size, complete flag
  <dir>/shard-00000.npz      image [n, m] float32, text [n, t] float32 (both
                             L2-normalised), caption [n] str, id [n] str

Anchor i of the store is row i of the shards concatenated in order. A part is
one source's pairs, cut into shards of `shard_size` rows; appending a part
(a data update, METHODS.md §3) gives its pairs the next indices. Every shard
is written whole under a temporary name and renamed, so a shard file that
exists is complete: embedding resumes by skipping the shards already there.

The manifest records each encoder's identity (registry name, checkpoint,
pooling, dimension and a hash of its weights); queries embedded by other
encoders are refused, since their similarities to the anchors mean nothing.
"""

from __future__ import annotations

import collections
import json
import os
import uuid

import numpy as np
import tensorflow as tf

from zoomshot_jax import io_utils
from zoomshot_jax.asif.relative import Searcher, aligned_empty
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError

FORMAT = "zoomshot_jax.asif.anchors/1"
MANIFEST = "manifest.json"
MODALITIES = ("image", "text")
_IDENTITY = ("name", "pooling", "dim", "fingerprint")


def encoder_info(encoder, kind: str) -> dict:
  """What the manifest records of an encoder (a `VisionEncoder` or `TextEncoder`)."""
  params = encoder.variables if kind == "image" else encoder.params
  extra = f"{encoder.name}:{encoder.pooling}"
  if kind == "text":
    extra += f":{encoder.max_length}:" + json.dumps(sorted(encoder.tokenizer.get_vocab().items()))
  return {"name": encoder.name, "checkpoint": encoder.checkpoint, "pooling": encoder.pooling,
          "dim": int(encoder.dim), "fingerprint": params_lib.fingerprint(params, extra)[:16]}


def shard_name(i: int) -> str:
  return f"shard-{i:05d}.npz"


class AnchorStore:
  """An anchor store directory (local or gs://); see the module docstring."""

  def __init__(self, path: str, manifest: dict):
    self.path = path
    self.manifest = manifest
    self._cache = collections.OrderedDict()  # (shard, array) -> array, last 4 read

  # --------------------------------------------------------- manifest

  @classmethod
  def exists(cls, path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, MANIFEST))

  @classmethod
  def open(cls, path: str) -> "AnchorStore":
    mpath = os.path.join(path, MANIFEST)
    if not tf.io.gfile.exists(mpath):
      raise UserError(f"anchor store {path!r} has no {MANIFEST}; run the embed-anchors stage "
                      "first (--config.stage=embed-anchors) or point anchors_dir at a store.")
    manifest = io_utils.read_json(mpath)
    if manifest.get("format") != FORMAT:
      raise UserError(f"{mpath} is not an anchor store manifest of this version "
                      f"(format {manifest.get('format')!r}, expected {FORMAT!r}).")
    return cls(path, manifest)

  @classmethod
  def new_manifest(cls, image: dict, text: dict, shard_size: int) -> dict:
    if shard_size <= 0:
      raise UserError(f"anchors.shard_size={shard_size} must be positive.")
    return {"format": FORMAT, "store_id": uuid.uuid4().hex, "image_encoder": image,
            "text_encoder": text, "shard_size": int(shard_size), "parts": [],
            "complete": False}

  def save_manifest(self) -> None:
    io_utils.atomic_write_json(os.path.join(self.path, MANIFEST), self.manifest)

  def check_encoders(self, image: dict, text: dict) -> None:
    """Refuses encoders other than the ones the anchors were embedded with."""
    for kind, info in (("image", image), ("text", text)):
      have = self.manifest[f"{kind}_encoder"]
      diff = [k for k in _IDENTITY if have.get(k) != info.get(k)]
      if diff:
        raise UserError(
            f"anchor store {self.path!r} was embedded with the {kind} encoder "
            f"{_describe(have)}, but the config's {kind}_encoder is {_describe(info)} "
            f"(differs in {diff}). Set {kind}_encoder to the store's, or embed the "
            "anchors again with this encoder into another anchors_dir.")

  @property
  def parts(self) -> list[dict]:
    return self.manifest["parts"]

  def add_part(self, source: str, num_examples: int, options: dict) -> dict:
    size = self.manifest["shard_size"]
    first = sum(p["num_shards"] for p in self.parts)
    part = {"source": source, "num_examples": int(num_examples), "options": options,
            "first_shard": first, "num_shards": -(-num_examples // size)}
    self.parts.append(part)
    self.manifest["complete"] = False
    return part

  # ------------------------------------------------------------ shards

  def shards(self) -> list[tuple[int, int, int]]:
    """(shard index, first anchor index, rows) of every shard, in order."""
    out, start, size = [], 0, self.manifest["shard_size"]
    for part in self.parts:
      for s in range(part["num_shards"]):
        rows = min(size, part["num_examples"] - s * size)
        out.append((part["first_shard"] + s, start, rows))
        start += rows
    return out

  @property
  def num_anchors(self) -> int:
    return sum(p["num_examples"] for p in self.parts)

  def shard_path(self, i: int) -> str:
    return os.path.join(self.path, shard_name(i))

  def missing_shards(self) -> list[int]:
    present = set(tf.io.gfile.listdir(self.path)) if tf.io.gfile.isdir(self.path) else set()
    return [i for i, _, _ in self.shards() if shard_name(i) not in present]

  def check_complete(self, flag: bool = True) -> None:
    """Every shard file is there (and, with `flag`, the manifest says complete)."""
    missing = self.missing_shards()
    if missing or (flag and not self.manifest.get("complete")):
      files = [shard_name(i) for i in missing[:3]]
      raise UserError(
          f"anchor store {self.path!r} is incomplete: {len(missing)} of "
          f"{len(self.shards())} shard files are missing (e.g. {files}). Run the "
          "embed-anchors stage again with the same config: it embeds only what is missing.")

  def write_shard(self, i: int, image: np.ndarray, text: np.ndarray, captions, ids) -> None:
    io_utils.atomic_save_npz(self.shard_path(i), image=image.astype(np.float32),
                             text=text.astype(np.float32), caption=np.asarray(captions, str),
                             id=np.asarray(ids, str))

  def read_shard(self, i: int, kind: str) -> np.ndarray:
    """One array of shard i ("image", "text", "caption" or "id"), checked
    against the manifest (rows, and the embedding dimension)."""
    if (i, kind) in self._cache:
      self._cache.move_to_end((i, kind))
      return self._cache[(i, kind)]
    rows = {s: r for s, _, r in self.shards()}[i]
    path = self.shard_path(i)
    if not tf.io.gfile.exists(path):
      raise UserError(f"anchor file {path!r} is missing; run the embed-anchors stage again "
                      "with the same config to re-embed it.")
    with tf.io.gfile.GFile(path, "rb") as f:
      with np.load(f, allow_pickle=False) as z:
        out = z[kind]
    if kind in MODALITIES:
      dim = self.manifest[f"{kind}_encoder"]["dim"]
      if out.ndim != 2 or out.shape[1] != dim:
        raise UserError(
            f"anchor file {path!r} holds {kind} embeddings of shape {out.shape}, but "
            f"the manifest's {kind} encoder ({_describe(self.manifest[kind + '_encoder'])}) "
            f"gives dimension {dim}. The file is not from this store: delete it and run "
            "embed-anchors again to re-embed it.")
    if len(out) != rows:
      raise UserError(f"anchor file {path!r} holds {len(out)} {kind} rows, but the manifest "
                      f"says the shard has {rows} image–caption pairs (image and text counts "
                      "must match). Delete it and run embed-anchors again to re-embed it.")
    self._cache[(i, kind)] = out
    if len(self._cache) > 4:
      self._cache.popitem(last=False)
    return out

  def rows(self, kind: str, start: int, end: int) -> np.ndarray:
    """Anchors [start, end) of one array ("image", "text", "caption" or "id").
    Embeddings come in one 64-byte aligned float32 array, which CPU devices
    use in place (relative.aligned): one copy out of the shards, not two."""
    out = []
    for i, first, n in self.shards():
      lo, hi = max(start, first), min(end, first + n)
      if lo < hi:
        out.append(self.read_shard(i, kind)[lo - first:hi - first])
    if kind not in MODALITIES:
      return np.concatenate(out)
    rows = aligned_empty((sum(len(o) for o in out), out[0].shape[1]))
    np.concatenate(out, out=rows)
    return rows

  def captions(self, indices) -> list[str]:
    """The captions of anchors `indices` (for explanations)."""
    return [str(self.rows("caption", int(i), int(i) + 1)[0]) for i in indices]

  def chunks(self, searcher: Searcher, kind: str, start: int = 0, chunk_size: int = 0):
    """Anchors [start, N) of one modality as `AnchorChunk`s on the searcher's mesh.

    chunk_size = 0 puts them all on the devices at once; otherwise they are
    streamed, chunk_size anchors at a time (each host reads only the rows of
    its own devices).
    """
    n, dim = self.num_anchors, self.manifest[f"{kind}_encoder"]["dim"]
    step = chunk_size or max(n - start, 1)
    for lo in range(start, n, step):
      hi = min(n, lo + step)
      # Any of the store's rows may be read: a device whose rows run past the
      # chunk reads the next anchors (or the store's last L rows), masked,
      # rather than getting a zero-padded copy (relative.AnchorChunk).
      yield searcher.place(lambda a, b: self.rows(kind, a, b), lo, hi - lo, dim,
                           available=(0, n))


def _describe(info: dict) -> str:
  return (f"{info.get('name')} {info.get('checkpoint')!r} (pooling {info.get('pooling')}, "
          f"dim {info.get('dim')}, weights {info.get('fingerprint')})")
