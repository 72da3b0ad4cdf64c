"""Embedding for ASIF: anchor pairs into the store (resumable), and evaluation queries.

Anchor shards are independent, so hosts split them round-robin and each
embeds its shards on its own devices, with no collective: a host that is
slow or restarted delays only its shards. A shard is written whole or not
at all (atomic rename), so a rerun with the same config embeds exactly the
shards that are missing (resume), and a rerun with another source and
`append=True` adds a part after the existing anchors.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from zoomshot_jax import console, data, sharding
from zoomshot_jax.asif.sources import AnchorSource
from zoomshot_jax.asif.store import AnchorStore, encoder_info
from zoomshot_jax.errors import UserError
from zoomshot_jax.ops import l2_normalize


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _cached_jit(encoder, kind: str, mesh, make):
  """One jitted function per (encoder, kind, mesh), kept on the encoder object,
  so that every shard of a run (and every run in a process) compiles once."""
  cache = encoder.__dict__.setdefault("_asif_jit", {})
  key = (kind, tuple(d.id for d in mesh.devices.flat))
  if key not in cache:
    cache[key] = make()
  return cache[key]


def embed_images(encoder, images: np.ndarray, mesh) -> np.ndarray:
  """uint8 [b, S, S, 3] (b a multiple of the mesh size) -> unit rows [b, m], on `mesh`."""
  rows, rep = NamedSharding(mesh, P(mesh.axis_names)), NamedSharding(mesh, P())

  def make():
    fn = jax.jit(lambda v, x: l2_normalize(encoder.image_features(v, x)),
                 in_shardings=(rep, rows), out_shardings=rows)
    return functools.partial(fn, jax.device_put(encoder.variables, rep))

  # A host-local mesh: device_put may place host data on it (jit may not, multi-host).
  return np.asarray(_cached_jit(encoder, "image", mesh, make)(jax.device_put(images, rows)))


def embed_texts(encoder, texts: list[str], batch_size: int, mesh) -> np.ndarray:
  """Unit text embeddings [n, t], in batches of fixed shapes on a host-local mesh.

  Token lengths are padded up to a power of two (the attention mask hides
  the padding from every pooling here, and CLIP pools its EOS token), so a
  run over many shards compiles a few shapes, not one per shard.
  """
  rows, rep = NamedSharding(mesh, P(mesh.axis_names)), NamedSharding(mesh, P())

  def make():
    fn = jax.jit(lambda p, i, m: l2_normalize(encoder.text_features(p, i, m)),
                 in_shardings=(rep, rows, rows), out_shardings=rows)
    return functools.partial(fn, jax.device_put(encoder.params, rep))

  fn = _cached_jit(encoder, "text", mesh, make)
  batch_size = max(1, batch_size // mesh.size) * mesh.size
  tokens = encoder.tokenize(texts)
  n, length = tokens["input_ids"].shape
  width = min(max(8, 1 << (length - 1).bit_length()), max(length, encoder.max_length))
  pad = getattr(encoder.tokenizer, "pad_token_id", None) or 0
  ids = np.full((-(-n // batch_size) * batch_size, width), pad, np.int32)
  mask = np.zeros_like(ids)
  ids[:n, :length], mask[:n, :length] = tokens["input_ids"], tokens["attention_mask"]
  mask[n:, 0] = 1  # padding rows: one visible token, no empty mean
  out = [np.asarray(fn(*jax.device_put((ids[i:i + batch_size], mask[i:i + batch_size]), rows)))
         for i in range(0, len(ids), batch_size)]
  return np.concatenate(out)[:n]


def _embed_shard(source: AnchorSource, start: int, end: int, image_encoder, text_encoder,
                 mesh, batch_size: int, text_batch_size: int):
  spec = image_encoder.preprocess
  ds = source.dataset(start, end).map(
      lambda ex: {**ex, "image": data.preprocess_image(ex["image"], spec)},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images, captions, ids = [], [], []
  it = iter(ds.batch(batch_size).prefetch(2).as_numpy_iterator())
  while True:
    try:
      batch = next(it)
    except StopIteration:
      break
    except tf.errors.InvalidArgumentError as e:
      raise UserError(f"anchors {source.spec!r}, pairs [{start}, {end}): a record could not "
                      f"be read or its image decoded ({e.message.splitlines()[0]}); remove "
                      "or replace that pair.") from e
    n = len(batch["image"])
    x = np.zeros((batch_size,) + batch["image"].shape[1:], np.uint8)
    x[:n] = batch["image"]  # one batch shape: one compilation
    images.append(embed_images(image_encoder, x, mesh)[:n])
    captions += [c.decode("utf-8", "replace") for c in batch["caption"]]
    ids += [i.decode("utf-8", "replace") for i in batch["id"]]
  if len(captions) != end - start:
    raise UserError(f"anchors {source.spec!r}: expected {end - start} pairs in [{start}, "
                    f"{end}) but read {len(captions)}; did the source change since it was "
                    "counted? Use a new anchors_dir.")
  text = embed_texts(text_encoder, captions, text_batch_size, mesh)
  return np.concatenate(images), text, captions, ids


def embed_anchors(path: str, source: AnchorSource, image_encoder, text_encoder,
                  shard_size: int, batch_size: int, text_batch_size: int,
                  append: bool = False) -> AnchorStore:
  """Embeds `source` into the store at `path` (created, resumed or appended to).

  Returns the store, complete. Every host calls this; hosts embed disjoint
  shards and process 0 writes the manifest.
  """
  image, text = encoder_info(image_encoder, "image"), encoder_info(text_encoder, "text")
  # Every host makes the same checks (so that a mistake stops all of them, not
  # only the one that would wait at a barrier); process 0 writes.
  if AnchorStore.exists(path):
    store = AnchorStore.open(path)
    store.check_encoders(image, text)
  else:
    store = AnchorStore(path, AnchorStore.new_manifest(image, text, shard_size))
  specs = [p["source"] for p in store.parts]
  if source.spec not in specs:
    if specs and not append:
      raise UserError(
          f"anchor store {path!r} already holds the anchors of {specs}; set "
          f"--config.anchors.append=True to add {source.spec!r} after them, or use "
          "another anchors_dir.")
    store.add_part(source.spec, source.num_examples, source.options)
    if jax.process_index() == 0:
      store.save_manifest()
  _sync("asif_manifest")
  store = AnchorStore.open(path)
  part = next(p for p in store.parts if p["source"] == source.spec)
  if part["num_examples"] != source.num_examples:
    raise UserError(f"anchors {source.spec!r} now holds {source.num_examples} pairs, but the "
                    f"store was started with {part['num_examples']}; the source changed. "
                    "Use another anchors_dir.")
  size = store.manifest["shard_size"]
  missing = store.missing_shards()
  mine = missing[jax.process_index()::jax.process_count()]
  mesh = sharding.local_mesh()
  batch_size = max(1, batch_size // mesh.size) * mesh.size
  logging.info("Anchors: %d of %d shards to embed, %d on this host.", len(missing),
               len(store.shards()), len(mine))
  t0 = time.time()
  for done, i in enumerate(mine):
    if not part["first_shard"] <= i < part["first_shard"] + part["num_shards"]:
      raise UserError(f"anchor store {path!r} misses {store.shard_path(i)!r} of another part "
                      f"({[p['source'] for p in store.parts]}); rerun embed-anchors with that "
                      "part's source to finish it first.")
    s = i - part["first_shard"]
    lo, hi = s * size, min(part["num_examples"], (s + 1) * size)
    arrays = _embed_shard(source, lo, hi, image_encoder, text_encoder, mesh,
                          batch_size, text_batch_size)
    store.write_shard(i, *arrays)
    rate = (done + 1) / (time.time() - t0)
    logging.info("Anchors: wrote %s (%d pairs).", store.shard_path(i), hi - lo)
    console.progress("embed anchors", done + 1, len(mine), (len(mine) - done - 1) / rate,
                     f"{rate * (hi - lo):.0f} pairs/s")
  _sync("asif_shards")
  store = AnchorStore.open(path)
  if jax.process_index() == 0:
    store.check_complete(flag=False)
    store.manifest["complete"] = True
    store.save_manifest()
  _sync("asif_complete")
  return AnchorStore.open(path)


def embed_split(encoder, source: data.Source, mesh, batch_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """L2-normalised features [n, m] and labels [n] of every example, on every host.

  Hosts embed contiguous shares over the global mesh (the evaluator's
  pipeline: padded, masked, equal step counts) and exchange the results.
  """
  local_bs = sharding.local_batch_size(batch_size, mesh)
  ds, _, _ = data.eval_batches(source, {"image": encoder.preprocess}, local_bs,
                               jax.process_index(), jax.process_count(),
                               agree_steps=sharding.host_max)
  rows = sharding.batch_sharding(mesh)
  fn = jax.jit(lambda v, x: l2_normalize(encoder.image_features(v, x)),
               in_shardings=(sharding.replicated(mesh), rows), out_shardings=rows)
  variables = sharding.replicate(encoder.variables, mesh)
  feats, labels, mask = [], [], []
  for batch in data.as_numpy(ds, f"dataset {source.name!r}"):
    out = fn(variables, sharding.to_global(batch["image"], rows))
    feats.append(sharding.local_rows(out))
    labels.append(batch["label"])
    mask.append(batch["mask"])
  return sharding.gather_rows((np.concatenate(feats), np.concatenate(labels)),
                              np.concatenate(mask))
