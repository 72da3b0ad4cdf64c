"""Training batches whose order is a function of (seed, epoch) alone.

A run resumed from step k sees exactly the batches an uninterrupted run sees
from step k. Both sources are callables `batches(step) -> global batch` with
`steps_per_epoch`, which is what `loop.train` takes.

  ArrayBatches  arrays held in host memory (cached features, a small world's
                images); each host feeds its contiguous share of each batch
  ImageBatches  images streamed through tf.data from a `data.Source`, one or
                more preprocessed views of each image
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from zoomshot_jax import sharding
from zoomshot_jax.errors import UserError


class ArrayBatches:
  """Global batches of in-memory arrays in a per-epoch seeded order.

  Args:
    arrays: {key: [n, ...]}, rows aligned.
    groups: key groups that follow independent permutations (e.g.
      `[["vision"], ["clip"]]`: no row pairs the same example across groups);
      default: one permutation for every key.
    make_batch: optional `(host rows {key: [b, ...]}, rng) -> batch` run on
      the host (e.g. picking one caption per image); `rng` is seeded by
      (seed, step).
  """

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, mesh,
               groups: Sequence[Sequence[str]] | None = None,
               make_batch: Callable[[dict, np.random.Generator], dict] | None = None,
               what: str = "training examples", field: str = "batch_size"):
    self.arrays = dict(arrays)
    self.n = len(next(iter(arrays.values())))
    self.batch_size, self.seed = batch_size, seed
    self.groups = [list(g) for g in (groups or [list(arrays)])]
    self.make_batch = make_batch
    self.steps_per_epoch = self.n // batch_size
    if self.steps_per_epoch == 0:
      raise UserError(f"config.{field}={batch_size} is larger than the {self.n} {what}; "
                      "lower it or use more data.")
    self._rows = sharding.batch_sharding(mesh)
    self._lo, self._hi = sharding.contiguous_rows(batch_size, jax.process_index(),
                                                  jax.process_count())
    self._orders: dict = {}

  def _order(self, epoch: int, group: int) -> np.ndarray:
    key = (epoch, group)
    if key not in self._orders:
      self._orders = {k: v for k, v in self._orders.items() if k[0] >= epoch}
      # The single-group seed [seed, epoch, 0] is the one used since the first release.
      self._orders[key] = np.random.default_rng([self.seed, epoch, group]).permutation(self.n)
    return self._orders[key]

  def rows(self, step: int) -> list[np.ndarray]:
    """Global row indices of batch `step`, one array per group."""
    epoch, i = divmod(step, self.steps_per_epoch)
    sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
    return [self._order(epoch, g)[sl] for g in range(len(self.groups))]

  def __call__(self, step: int) -> dict:
    local = {}
    for keys, rows in zip(self.groups, self.rows(step)):
      mine = rows[self._lo:self._hi]
      local.update({k: self.arrays[k][mine] for k in keys})
    if self.make_batch is not None:
      local = self.make_batch(local, np.random.default_rng([self.seed, step, 1]))
    return sharding.to_global(local, self._rows)


class ImageBatches:
  """Global image batches from a tf.data source, a seeded shuffle per epoch.

  tf.data order is deterministic for a seed, so batch `step` is found by
  skipping within its epoch (a resumed run re-reads, but does not re-encode,
  the skipped part of the epoch).

  Args:
    views: {key: PreprocessSpec}: each image preprocessed once per view.
    independent: each view follows its own shuffle (no row pairs the same
      image across views).
    augment: seeded random resized crop + flip (the same for every view of
      an image).
    keep: other keys of the examples to batch too (e.g. "label").
    in_memory_bytes: this host's share is decoded once and held in memory
      when it fits (`data.pipeline.in_memory`); 0 = decode every epoch.
  """

  def __init__(self, source, views: dict, batch_size: int, seed: int, mesh,
               independent: bool = False, augment: bool = False, keep: tuple = (),
               in_memory_bytes: int = 0):
    from zoomshot_jax import data  # pylint: disable=g-import-not-at-top
    self._data, self._source, self._views = data, source, dict(views)
    self._local_bs = sharding.local_batch_size(batch_size, mesh)
    self._seed, self._independent, self._augment = seed, independent, augment
    self._keep = tuple(keep)
    pi, pc = jax.process_index(), jax.process_count()
    n_local = source.host_shard(pi, pc)[1]
    if in_memory_bytes > 0:
      held = data.pipeline.in_memory(source, pi, pc, in_memory_bytes)
      logging.info("Training images of %r: %s.", source.name,
                   f"{n_local} decoded images held in memory" if held else
                   f"streamed and decoded every epoch ({n_local} images do not fit in "
                   f"{in_memory_bytes / 2**30:.2g} GB, or differ in shape)")
      self._source = held or source
    # Hosts must run the same number of steps: the smallest share decides.
    self.steps_per_epoch = -sharding.host_max(-(n_local // self._local_bs))
    if self.steps_per_epoch <= 0:
      raise UserError(f"config.batch_size={batch_size} is larger than the training images "
                      f"({n_local} on this host); lower it or use more images.")
    self._rows = sharding.batch_sharding(mesh)
    self._it, self._next = None, None

  def _epoch(self, epoch: int, skip: int):
    pi, pc = jax.process_index(), jax.process_count()

    def batches(views, side):
      return self._data.train_batches(self._source, views, self._local_bs,
                                      self._seed * 7919 + epoch * 2 + side, pi, pc,
                                      augment=self._augment)

    if not self._independent:
      ds = batches(self._views, 0)
    else:
      parts = [batches({k: v}, side) for side, (k, v) in enumerate(self._views.items())]
      ds = tf.data.Dataset.zip(tuple(parts)).map(_merge)
    return self._data.as_numpy(ds.skip(skip), f"training images of {self._source.name!r}")

  def __call__(self, step: int) -> dict:
    epoch, i = divmod(step, self.steps_per_epoch)
    if self._next != step:
      self._data.pipeline.close_later(self._it)
      self._it = self._epoch(epoch, i)
    batch = next(self._it)
    self._next = step + 1 if i + 1 < self.steps_per_epoch else None
    return sharding.to_global({k: batch[k] for k in (*self._views, *self._keep)}, self._rows)


def _merge(*parts):
  out = {}
  for p in parts:
    out.update(p)
  return out
