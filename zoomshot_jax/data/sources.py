"""Where examples come from: tfds datasets and `folder:<path>` image folders.

A `Source` gives each host its contiguous share of a split as a tf.data
dataset of decoded examples `{"image": uint8 [H, W, 3], "label": int32}`,
read in a fixed order, plus the share's size. Shares are contiguous and in
process order, so concatenating the hosts' shares is the single-host order:
every example is seen exactly once on any number of hosts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from zoomshot_jax.errors import UserError

# tf.data must never take accelerator memory from JAX.
tf.config.set_visible_devices([], "GPU")

FOLDER_PREFIX = "folder:"
# Decoded by TensorFlow; other extensions below go through PIL.
_TF_FORMATS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_PIL_FORMATS = (".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGE_EXTENSIONS = _TF_FORMATS + _PIL_FORMATS


@dataclasses.dataclass
class Source:
  """A labelled image split, shardable over hosts."""

  name: str
  split: str
  num_classes: int
  label_names: list[str] | None
  # (process_index, process_count) -> (dataset of decoded examples, its size)
  _shard: Callable[[int, int], tuple[tf.data.Dataset, int]]
  # Random access for training subsets: () -> the split's size, and
  # sorted example indices -> dataset of those examples, in that order.
  _size: Callable[[], int] | None = None
  _read: Callable[[np.ndarray], tf.data.Dataset] | None = None

  def host_shard(self, process_index: int = 0, process_count: int = 1):
    return self._shard(process_index, process_count)

  def size(self) -> int:
    """Number of examples in the whole split."""
    if self._size is None:
      return self._shard(0, 1)[1]
    return self._size()

  def subset(self, indices: np.ndarray, name: str | None = None) -> "Source":
    """The examples at sorted `indices` of the split, as a Source of their own.

    Hosts get contiguous shares of `indices`, so a seeded subset (e.g. 1% of
    ImageNet train) is read once in total, in the split's order.
    """
    if self._read is None:
      raise UserError(f"dataset {self.name!r} cannot be subsampled.")
    indices = np.asarray(indices, np.int64)
    if indices.size and np.any(np.diff(indices) <= 0):
      raise ValueError("subset indices must be sorted and unique.")

    def shard(index, count):
      start, end = contiguous_range(len(indices), index, count)
      part = indices[start:end]
      if not len(part):
        return self._read(indices[:1]).take(0), 0
      return self._read(part), len(part)

    return Source(name=name or f"{self.name}[subset of {len(indices)}]", split=self.split,
                  num_classes=self.num_classes, label_names=self.label_names, _shard=shard,
                  _size=lambda: len(indices), _read=lambda idx: self._read(indices[idx]))


def contiguous_range(n: int, index: int, count: int) -> tuple[int, int]:
  """[start, end) of share `index` of `count` near-equal contiguous shares of n."""
  return n * index // count, n * (index + 1) // count


def _rgb(image: tf.Tensor) -> tf.Tensor:
  """Any channel count -> 3 channels (grey tiled, alpha dropped)."""
  channels = tf.shape(image)[-1]
  image = tf.cond(channels == 1, lambda: tf.image.grayscale_to_rgb(image[..., :1]),
                  lambda: image[..., :3])
  return tf.ensure_shape(image, [None, None, 3])


# ------------------------------------------------------------------ tfds


def tfds_source(name: str, split: str, data_dir: str | None = None,
                download: bool = False) -> Source:
  """A tfds dataset with `image` and `label` features."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f"dataset {name!r} is not a tfds dataset. Use one of the "
                    "datasets with class names in zoomshot_jax/evaluation/classnames, "
                    "another tfds image classification dataset, or folder:<path>.") from e
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise UserError(f"tfds dataset {name!r} has features {sorted(features)}; "
                    "zero-shot evaluation needs 'image' and 'label'.")
  if download and not builder.is_prepared():
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"tfds could not download and prepare {name!r} into "
                      f"{builder.data_dir}: {str(e).splitlines()[0]}") from e
  label = features["label"]
  names = list(label.names) if hasattr(label, "names") else None

  def to_example(ex):
    return {"image": _rgb(ex["image"]), "label": tf.cast(ex["label"], tf.int32)}

  def shard(index, count):
    ds = _as_dataset(builder, name, split, index, count)
    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    n = int(ds.cardinality())
    if n < 0:  # unknown (e.g. under tfds.testing.mock_data): count once
      n = int(ds.reduce(0, lambda c, _: c + 1))
    return ds, n

  def size():
    try:
      return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):  # no split info (mock_data)
      return shard(0, 1)[1]

  def read(indices):
    if "[" in split:
      raise UserError(f"split {split!r} of {name!r}: training subsets are drawn from a "
                      "whole split; give a plain split name and set train_fraction.")
    start, end = int(indices[0]), int(indices[-1]) + 1
    keep = np.zeros(end - start, bool)
    keep[indices - start] = True
    keep = tf.constant(keep)
    # Records are read raw and only the kept ones are decoded: a 1% subset
    # costs 1% of the decoding. take() is a no-op on real data (mock_data
    # ignores slices).
    ds = _as_dataset(builder, name, f"{split}[{start}:{end}]", 0, 1,
                     decoders={"image": tfds.decode.SkipDecoding()}).take(end - start)
    image = features["image"]

    # Named functions, not lambdas: autograph cannot read two lambdas on one line.
    def kept(i, ex):
      del ex
      return keep[i]

    def decode(i, ex):
      del i
      return to_example({"image": image.decode_example(ex["image"]), "label": ex["label"]})

    return ds.enumerate().filter(kept).map(decode, num_parallel_calls=tf.data.AUTOTUNE)

  return Source(name=name, split=split, num_classes=int(label.num_classes),
                label_names=names, _shard=shard, _size=size, _read=read)


def _not_prepared(builder, name: str, err: Exception) -> UserError:
  msg = (f"tfds dataset {name!r} is not prepared: tfds looked in "
         f"{builder.data_dir} (data_dir={builder.data_dir_root!r}).")
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    msg += (f" It needs a manual download: put the files described below in "
            f"{os.path.join(builder.data_dir_root, 'downloads', 'manual')} and run "
            f"`tfds build {name} --data_dir={builder.data_dir_root}`.\n"
            f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
  else:
    msg += (f" Prepare it with `tfds build {name} --data_dir={builder.data_dir_root}`, "
            "or pass --config.data_dir pointing at prepared data, or set "
            "--config.tfds_download=True.")
  return UserError(msg)


def _as_dataset(builder, name, split, index, count, decoders=None) -> tf.data.Dataset:
  if count > 1:
    split = tfds.even_splits(split, n=count, drop_remainder=False)[index]
  # One file at a time, files in order: a fixed global order, so that host
  # shares concatenate to the single-host order.
  read_config = tfds.ReadConfig(interleave_cycle_length=1, shuffle_seed=None)
  try:
    return builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                              decoders=decoders)
  except (AssertionError, tf.errors.NotFoundError, FileNotFoundError) as e:
    raise _not_prepared(builder, name, e) from e
  except ValueError as e:
    if "split" in str(e).lower():
      known = sorted(builder.info.splits) if builder.info.splits else "unknown"
      raise UserError(f"split {split!r} of {name!r} is not valid ({str(e).splitlines()[0]}); "
                      f"available splits: {known}.") from e
    raise


# ---------------------------------------------------------------- folder


def list_folder(root: str, verify: bool) -> tuple[list[str], list[str], list[int]]:
  """(class names, image files, labels) of a <root>/<class>/<file> folder, sorted."""
  if not tf.io.gfile.isdir(root):
    raise UserError(f"folder dataset {root!r} does not exist or is not a directory.")
  classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                   if tf.io.gfile.isdir(os.path.join(root, d)))
  if not classes:
    raise UserError(f"folder dataset {root!r} has no class sub-directories; expected "
                    f"{root}/<class_name>/<image files>.")
  files, labels = [], []
  for i, c in enumerate(classes):
    found = sorted(f for f in tf.io.gfile.listdir(os.path.join(root, c))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
      raise UserError(f"class directory {os.path.join(root, c)!r} has no images "
                      f"(looked for {', '.join(IMAGE_EXTENSIONS)}).")
    files += [os.path.join(root, c, f) for f in found]
    labels += [i] * len(found)
  if verify and "://" not in root:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    # Headers only (fast even for ImageNet's 50k files): a file that is no
    # image is named here; a truncated body fails at decode, also as a UserError.
    for f in files:
      try:
        with Image.open(f):
          pass
      except Exception as e:  # pylint: disable=broad-except
        raise UserError(f"image file {f!r} cannot be read ({e}); remove or "
                        "replace it.") from e
  names = [c.replace("_", " ") for c in classes]
  return names, files, labels


def _pil_decode(path: bytes) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(path.decode()) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  lower = tf.strings.lower(path)
  native = tf.reduce_any([tf.strings.regex_full_match(lower, f".*\\{e}") for e in _TF_FORMATS])

  def tf_decode():
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)

  def pil_decode():
    return tf.numpy_function(_pil_decode, [path], tf.uint8, stateful=False)

  image = tf.cond(native, tf_decode, pil_decode)
  return tf.ensure_shape(image, [None, None, 3])


def folder_source(spec: str, verify: bool = True, extras=None) -> Source:
  """`folder:<path>`: one sub-directory per class, name = directory ('_' -> ' ').

  extras: optional `files -> {key: array [n]}` of per-file fields (in the
  listing's order) carried with each example, e.g. a caption id.
  """
  root = spec[len(FOLDER_PREFIX):] if spec.startswith(FOLDER_PREFIX) else spec
  names, files, labels = list_folder(root, verify)
  logging.info("Folder %s: %d classes, %d images.", root, len(names), len(files))

  files_arr, labels_arr = np.asarray(files), np.asarray(labels, np.int32)
  more = extras(files) if extras else {}

  def read(indices):
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": files_arr[indices], "label": labels_arr[indices],
         **{k: v[indices] for k, v in more.items()}})
    return ds.map(lambda ex: {**{k: v for k, v in ex.items() if k != "path"},
                              "image": _decode_file(ex["path"])},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def shard(index, count):
    start, end = contiguous_range(len(files), index, count)
    return read(np.arange(start, end)), end - start

  return Source(name=spec, split="all", num_classes=len(names), label_names=names,
                _shard=shard, _size=lambda: len(files), _read=read)


def get_source(name: str, split: str, data_dir: str | None = None,
               download: bool = False, verify_images: bool = True) -> Source:
  if name.startswith(FOLDER_PREFIX):
    return folder_source(name, verify_images)
  return tfds_source(name, split, data_dir, download)
