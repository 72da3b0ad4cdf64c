"""tf.data input pipelines: decode -> encoder preprocessing -> host batches.

Batches are host-local numpy dicts; `sharding.to_global` turns them into
global arrays. Images leave the host as uint8 after resize and crop (a
quarter of float32's bytes); scaling and mean/std run on device inside the
jitted step (`PreprocessSpec.normalize`).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from zoomshot_jax.data.sources import Source
from zoomshot_jax.encoders.preprocessing import PreprocessSpec
from zoomshot_jax.errors import UserError


def preprocess_image(image: tf.Tensor, spec: PreprocessSpec) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [S, S, 3], S = spec.image_size (HF geometry).

  shortest_edge: the short side becomes `resize`, the long side
  int(resize * long / short), as HF's get_resize_output_image_size; then a
  centre crop with offsets (H - S) // 2 as HF's center_crop.
  """
  if spec.resize_mode == "exact":
    size = tf.constant([spec.resize, spec.resize])
  else:
    # float64, as HF's int(size * long / short) in Python floats.
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    short, long = tf.reduce_min(hw), tf.reduce_max(hw)
    new_long = tf.cast(spec.resize * long / short, tf.int32)
    size = tf.where(hw[0] <= hw[1], tf.stack([spec.resize, new_long]),
                    tf.stack([new_long, spec.resize]))
  image = tf.image.resize(image, size, method=spec.interpolation, antialias=True)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  if spec.crop:
    h, w = size[0], size[1]
    image = tf.image.crop_to_bounding_box(image, (h - spec.crop) // 2, (w - spec.crop) // 2,
                                          spec.crop, spec.crop)
  s = spec.image_size
  return tf.ensure_shape(image, [s, s, 3])


def _check_spec(spec: PreprocessSpec, view: str):
  if spec.crop and spec.resize_mode == "shortest_edge" and spec.crop > spec.resize:
    raise UserError(f"view {view!r}: centre crop {spec.crop} is larger than the "
                    f"resize {spec.resize}; fix the preprocessor config.")


def _map_views(views: Mapping[str, PreprocessSpec]):
  for name, spec in views.items():
    _check_spec(spec, name)

  def fn(ex):
    # Other fields of the example (a source's extras, e.g. a caption id) ride along.
    out = {k: v for k, v in ex.items() if k != "image"}
    out.update({name: preprocess_image(ex["image"], spec) for name, spec in views.items()})
    out["mask"] = tf.constant(True)
    return out

  return fn


def _padding_example(views: Mapping[str, PreprocessSpec]):
  ex = {name: tf.zeros([s.image_size, s.image_size, 3], tf.uint8) for name, s in views.items()}
  ex["label"] = tf.constant(0, tf.int32)
  ex["mask"] = tf.constant(False)
  return ex


def eval_batches(source: Source, views: Mapping[str, PreprocessSpec], local_batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 agree_steps: Callable[[int], int] = lambda steps: steps,
                 ) -> tuple[tf.data.Dataset, int, int]:
  """Every example of this host's share exactly once, padded and masked.

  The last partial batch is filled with zero images whose `mask` is False.
  `agree_steps` maps this host's step count to the one all hosts run (their
  maximum, `sharding.host_max`); whole padding batches fill the difference,
  so that every host runs the same number of steps of a collective computation.

  Returns:
    (dataset of batches {view: uint8 [b, S, S, 3], "label": int32 [b],
     "mask": bool [b]}, this host's example count, number of steps).
  """
  ds, n_local = source.host_shard(process_index, process_count)
  steps = agree_steps(math.ceil(n_local / local_batch_size))
  n_pad = steps * local_batch_size - n_local
  if n_pad < 0:
    raise ValueError(f"{steps} steps are too few for {n_local} examples.")
  ds = ds.map(_map_views(views), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if n_pad:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(_padding_example(views)).repeat(n_pad))
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds, n_local, steps


def augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Random resized crop (area 35-100%, aspect 3/4-4/3) and horizontal flip.

  Stateless: the result is a function of (image, seed), so a resumed run
  sees the same augmented images as an uninterrupted one.
  """
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=box_seed,
      area_range=(0.35, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, size)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def train_batches(source: Source, views: Mapping[str, PreprocessSpec], local_batch_size: int,
                  seed: int, process_index: int = 0, process_count: int = 1,
                  shuffle_buffer: int = 10_000, augment: bool = False) -> tf.data.Dataset:
  """One pass over this host's share, shuffled by `seed`, whole batches only.

  Several views of the same example (e.g. {"clip": ..., "vision": ...} for
  Zoom-shot's paired mode) are cut from the same decoded (and, with
  `augment`, the same augmented) image.
  """
  ds, _ = source.host_shard(process_index, process_count)
  ds = ds.shuffle(shuffle_buffer, seed=seed + process_index, reshuffle_each_iteration=False)
  if augment:
    ds = ds.enumerate().map(
        lambda i, ex: {**ex, "image": augment_image(
            ex["image"], tf.stack([tf.cast(seed * 1009 + process_index, tf.int64), i]))},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.map(_map_views(views), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def memory_bytes(gb, field: str) -> int:
  """A config's size in GB as bytes; a UserError naming `field` unless >= 0."""
  if isinstance(gb, bool) or not isinstance(gb, (int, float)) or not gb >= 0:
    raise UserError(f"config.{field}={gb!r}: expected a size in GB, 0 or more (0 = off).")
  return int(gb * 2**30)


def in_memory(source: Source, process_index: int, process_count: int,
              max_bytes: int) -> Source | None:
  """This host's share of `source`, decoded once and then served from memory.

  A small training set (a text-to-image folder, the demo's synthetic
  images) is otherwise read and decoded again every epoch, and each epoch
  opens with a full shuffle buffer of decoding while the step waits. The
  examples keep their order, so the shuffle, augmentation and batches are
  the streamed ones, bit for bit (tests/test_data.py).

  Returns None (stream as before) when the share's images would take more
  than `max_bytes` (estimated from the first one: only that is read) or
  their shapes differ (one array holds them).
  """
  if max_bytes <= 0:
    return None
  ds, n = source.host_shard(process_index, process_count)
  it = as_numpy(ds.prefetch(tf.data.AUTOTUNE), f"training images of {source.name!r}")
  first = next(it, None)
  if first is None or first["image"].nbytes * n > max_bytes:
    close_later(it)
    return None
  images = np.empty((n, *first["image"].shape), first["image"].dtype)
  others: dict[str, list] = {k: [] for k in first if k != "image"}   # labels, caption ids
  count = 0
  for count, ex in enumerate(itertools.chain([first], it), 1):
    if count > n or ex["image"].shape != first["image"].shape:
      close_later(it)
      return None
    images[count - 1] = ex["image"]
    for k, values in others.items():
      values.append(ex[k])
  if count != n:
    return None
  # One copy, shared by every epoch's pipeline.
  tensors = {"image": tf.constant(images), **{k: tf.constant(np.asarray(v))
                                               for k, v in others.items()}}
  share = (process_index, process_count)

  def shard(index, count_):
    if (index, count_) != share:
      raise ValueError(f"held in memory for host share {share}, asked for {(index, count_)}.")
    return tf.data.Dataset.from_tensor_slices(tensors), n

  return Source(name=source.name, split=source.split, num_classes=source.num_classes,
                label_names=source.label_names, _shard=shard)


def close_later(iterator) -> None:
  """Closes an unfinished `as_numpy` iterator on a thread of its own.

  A training pipeline is replaced before it ends (at each epoch or window).
  Tearing it down blocks, mostly asleep, while tf.data stops its background
  threads: 1.3-2.4 s per epoch in the demo's distillation, with the step
  waiting, against 0.15 s to build the next epoch's pipeline and take its
  first batch. The thread is not a daemon: the interpreter waits for it at exit.
  """
  if iterator is not None:
    threading.Thread(target=iterator.close, name="tf.data teardown").start()


def as_numpy(ds: tf.data.Dataset, context: str) -> Iterator[dict[str, np.ndarray]]:
  """Iterates numpy batches; a file that fails to decode becomes a UserError."""
  it = iter(ds.as_numpy_iterator())
  while True:
    try:
      yield next(it)
    except StopIteration:
      return
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      # NotFound: a file listed by a record (VL tasks) vanished after the checks.
      raise UserError(f"{context}: an image could not be read or decoded "
                      f"({e.message.splitlines()[0][:300]}); remove or replace it.") from e
