"""Where anchor image–caption pairs come from.

A source spec names a collection of N pairs in a fixed order; rows [a, b) of
it come back as a tf.data dataset of {"image": uint8 [H, W, 3], "caption":
string, "id": string} (the id names the image: its path, record or tfds id).

  tsv:<file>        a header line, then one pair per line, tab-separated; the
                    columns `image_key` (a path, relative to the file's
                    directory or absolute) and `caption_key`
  jsonl:<file>      one JSON object per line with the same two keys
  tfrecord:<glob>   tf.train.Example records with the encoded image bytes
                    under `image_key` and the caption under `caption_key`
                    (img2dataset's tfrecord output: "jpg" and "txt"), files
                    in sorted order
  tfds:<name>       a tfds dataset with an `image` and captions, e.g.
                    coco_captions (the first of each image's captions)

`max_examples` keeps the first pairs only (the paper: the first 1.6M of
CC12M). Counting is done once and kept in the anchor store's manifest
(`options`), so a resumed run does not read every record again.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from zoomshot_jax.data.sources import _decode_file, _rgb  # pylint: disable=protected-access
from zoomshot_jax.errors import UserError

KINDS = ("tsv", "jsonl", "tfrecord", "tfds")


@dataclasses.dataclass
class AnchorSource:
  """N image–caption pairs in a fixed order, readable by row range."""

  spec: str
  num_examples: int
  # What the manifest keeps to reopen the source without recounting.
  options: dict
  _read: Callable[[int, int], tf.data.Dataset]

  def dataset(self, start: int, end: int) -> tf.data.Dataset:
    """Pairs [start, end) as {"image": uint8 [H, W, 3], "caption", "id"}."""
    return self._read(start, end)


def _split_spec(spec: str) -> tuple[str, str]:
  if not spec:
    raise UserError("config.anchors.source is not set: give the image–caption pairs, e.g. "
                    "--config.anchors.source='tfrecord:/data/cc12m/*.tfrecord' (img2dataset "
                    "TFRecords of CC12M, the paper's anchors), tsv:<file>, jsonl:<file> or "
                    "tfds:coco_captions.")
  kind, sep, rest = spec.partition(":")
  if not sep or kind not in KINDS or not rest:
    raise UserError(f"anchors.source={spec!r}: expected <kind>:<path or name> with kind "
                    f"one of {list(KINDS)}, e.g. tsv:/data/cc3m/pairs.tsv, "
                    "tfrecord:/data/cc12m/*.tfrecord or tfds:coco_captions.")
  return kind, rest


# -------------------------------------------------------------- files


def _read_rows(kind: str, path: str, image_key: str, caption_key: str):
  if not tf.io.gfile.exists(path):
    raise UserError(f"anchors file {path!r} does not exist.")
  with tf.io.gfile.GFile(path) as f:
    lines = f.read().splitlines()
  if kind == "tsv":
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
      raise UserError(f"anchors file {path!r} is empty; it needs a header line naming "
                      f"the columns {image_key!r} and {caption_key!r}.")
    header = rows[0]
    missing = [k for k in (image_key, caption_key) if k not in header]
    if missing:
      raise UserError(f"anchors file {path!r}: the header {header} lacks the columns "
                      f"{missing}; name them in the first line or set "
                      "anchors.image_key / anchors.caption_key.")
    ii, ci = header.index(image_key), header.index(caption_key)
    records = [(n + 2, r[ii] if len(r) > ii else "", r[ci] if len(r) > ci else "")
               for n, r in enumerate(rows[1:]) if any(r)]
  else:
    records = []
    for n, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"anchors file {path!r} line {n + 1} is not JSON ({e}).") from e
      records.append((n + 1, str(obj.get(image_key, "")), str(obj.get(caption_key, ""))))
  images = [r[1].strip() for r in records]
  captions = [r[2].strip() for r in records]
  no_image = [r[0] for r, i in zip(records, images) if not i]
  no_caption = [r[0] for r, c in zip(records, captions) if not c]
  if no_image or no_caption:
    raise UserError(
        f"anchors file {path!r}: every pair needs an image and a caption, but there are "
        f"{len(images) - len(no_image)} images and {len(captions) - len(no_caption)} captions "
        f"(no {image_key!r} on lines {no_image[:5]}, no {caption_key!r} on lines "
        f"{no_caption[:5]}); fix or drop those lines.")
  base = os.path.dirname(path)
  images = [i if os.path.isabs(i) or "://" in i else os.path.join(base, i) for i in images]
  return images, captions


def _file_source(spec, kind, path, image_key, caption_key, max_examples, verify):
  images, captions = _read_rows(kind, path, image_key, caption_key)
  if max_examples:
    images, captions = images[:max_examples], captions[:max_examples]
  if not images:
    raise UserError(f"anchors file {path!r} holds no pairs.")
  if verify and "://" not in path:
    missing = [i for i in images if not os.path.exists(i)]
    if missing:
      raise UserError(f"anchors file {path!r}: {len(missing)} of {len(images)} image files "
                      f"are missing, e.g. {missing[:3]}; restore them or drop their lines.")

  def read(start, end):
    ds = tf.data.Dataset.from_tensor_slices({"id": images[start:end],
                                             "caption": captions[start:end]})
    return ds.map(lambda ex: {"image": _decode_file(ex["id"]), **ex},
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  return AnchorSource(spec, len(images), {}, read)


# ----------------------------------------------------------- tfrecord


def _count_records(files: list[str], max_examples: int) -> list[int]:
  counts, total = [], 0
  for f in files:
    n = int(tf.data.TFRecordDataset(f).reduce(np.int64(0), lambda c, _: c + 1))
    counts.append(n)
    total += n
    if max_examples and total >= max_examples:
      break
  return counts


def _tfrecord_source(spec, pattern, image_key, caption_key, max_examples, known):
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise UserError(f"anchors.source={spec!r}: no files match {pattern!r}.")
  first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
  if first is not None:
    keys = set(tf.train.Example.FromString(first.numpy()).features.feature)
    missing = [k for k in (image_key, caption_key) if k not in keys]
    if missing:
      raise UserError(f"anchors.source={spec!r}: records of {files[0]!r} have the features "
                      f"{sorted(keys)}, not {missing}; set anchors.image_key / "
                      "anchors.caption_key (img2dataset writes 'jpg' and 'txt').")
  counts = known.get("file_counts") if known.get("files") == files else None
  if counts is None:
    logging.info("Counting the records of %d files (once; kept in the manifest).", len(files))
    counts = _count_records(files, max_examples)
  n = sum(counts) if not max_examples else min(sum(counts), max_examples)
  starts = np.cumsum([0] + counts)
  features = {image_key: tf.io.FixedLenFeature([], tf.string),
              caption_key: tf.io.FixedLenFeature([], tf.string)}

  def parse(record, rid):
    ex = tf.io.parse_single_example(record, features)
    image = tf.io.decode_image(ex[image_key], channels=3, expand_animations=False)
    return {"image": _rgb(image), "caption": ex[caption_key], "id": rid}

  def read(start, end):
    parts = []
    for i, f in enumerate(files[:len(counts)]):
      lo, hi = max(start, starts[i]), min(end, starts[i + 1])
      if lo < hi:
        ids = [f"{os.path.basename(f)}:{j}" for j in range(lo - starts[i], hi - starts[i])]
        recs = tf.data.TFRecordDataset(f).skip(lo - starts[i]).take(hi - lo)
        parts.append(tf.data.Dataset.zip(recs, tf.data.Dataset.from_tensor_slices(ids)))
    ds = parts[0]
    for p in parts[1:]:
      ds = ds.concatenate(p)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  return AnchorSource(spec, n, {"files": files, "file_counts": counts}, read)


# --------------------------------------------------------------- tfds


def _tfds_source(spec, name, split, data_dir, max_examples):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f"anchors.source={spec!r}: {name!r} is not a tfds dataset.") from e
  features = builder.info.features
  if "image" not in features or "captions" not in features:
    raise UserError(f"anchors.source={spec!r}: tfds dataset {name!r} has features "
                    f"{sorted(features)}; anchors need 'image' and 'captions' "
                    "(as coco_captions has).")
  read_config = tfds.ReadConfig(interleave_cycle_length=1, shuffle_seed=None)

  def load(split_spec):
    try:
      return builder.as_dataset(split=split_spec, shuffle_files=False, read_config=read_config)
    except (AssertionError, tf.errors.NotFoundError, FileNotFoundError, ValueError) as e:
      raise UserError(f"anchors.source={spec!r}: tfds could not read split {split!r} of "
                      f"{name!r} from {builder.data_dir} ({str(e).splitlines()[0]}); "
                      f"prepare it with `tfds build {name} --data_dir=...`.") from e

  known = split in (builder.info.splits or {})
  if known:
    n = int(builder.info.splits[split].num_examples)
  else:  # no split metadata (tfds.testing.mock_data): count once
    n = int(load(split).reduce(np.int64(0), lambda c, _: c + 1))
  n = min(n, max_examples) if max_examples else n

  def convert(ex):
    rid = tf.strings.as_string(ex["image/id"]) if "image/id" in ex else tf.constant("")
    return {"image": _rgb(ex["image"]), "caption": ex["captions"]["text"][0], "id": rid}

  def read(start, end):
    # Split slicing reads only those records; mock data ignores slices.
    ds = load(f"{split}[{start}:{end}]") if known else load(split).skip(start).take(end - start)
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  return AnchorSource(spec, n, {}, read)


def get_anchor_source(spec: str, image_key: str = "image", caption_key: str = "caption",
                      split: str = "train", data_dir: str | None = None,
                      max_examples: int = 0, verify_files: bool = True,
                      known: dict | None = None) -> AnchorSource:
  """Opens an anchor source spec (see the module docstring).

  Args:
    known: the `options` a manifest kept for this spec (skips recounting).
  """
  kind, rest = _split_spec(spec)
  if max_examples < 0:
    raise UserError(f"anchors.max_anchors={max_examples} must be >= 0 (0: all pairs).")
  if kind in ("tsv", "jsonl"):
    source = _file_source(spec, kind, rest, image_key, caption_key, max_examples, verify_files)
  elif kind == "tfrecord":
    source = _tfrecord_source(spec, rest, image_key, caption_key, max_examples, known or {})
  else:
    source = _tfds_source(spec, rest, split, data_dir, max_examples)
  if source.num_examples == 0:
    raise UserError(f"anchors.source={spec!r} holds no image–caption pairs.")
  return source
