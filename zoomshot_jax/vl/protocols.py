"""The VL protocols: seeded low-shot subsets and domain-shift splits (METHODS.md §5).

They work on any reader records (zoomshot_jax/vl/readers.py) through their
`id`: low-shot = a seeded subset of train, the same examples for every method
given the seed; domain shift = a split file of ids, or VCR's held-out movies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoomshot_jax.errors import UserError
from zoomshot_jax.vl.files import read_json
from zoomshot_jax.vl.readers import VCRExample

# The protocol's low-shot sizes (METHODS.md); `low_shot` takes any (0, 100].
LOW_SHOT_PERCENTS = (0.1, 1, 5, 10, 100)


def low_shot(records: Sequence, percent: float, seed: int) -> list:
  """A seeded `percent`% subset of records (at least one), in their original order.

  A seeded permutation of the records sorted by id, cut to a prefix: the same
  examples for every method and host given the seed, whatever order the file
  lists them in, and nested (the 1% subset contains the 0.1% one).
  """
  if not 0 < percent <= 100:
    raise UserError(f"low-shot percent {percent!r} must be in (0, 100], e.g. one of "
                    f"{LOW_SHOT_PERCENTS}.")
  order = sorted(range(len(records)), key=lambda i: str(records[i].id))
  perm = np.random.default_rng(seed).permutation(len(records))
  n = max(1, int(round(len(records) * percent / 100)))
  keep = sorted(order[j] for j in perm[:n])
  return [records[i] for i in keep]


def apply_split_file(records: Sequence, path: str) -> tuple[list, list]:
  """(train records, test records) chosen by a split file `{"train": [ids], "test": [ids]}`.

  Ids are compared as strings, so a file written with quoted question ids works.
  """
  split = read_json(path)
  if not (isinstance(split, dict) and isinstance(split.get("train"), list)
          and isinstance(split.get("test"), list)):
    raise UserError(f"split file {path!r} should be {{\"train\": [ids], \"test\": [ids]}}.")
  by_id = {str(r.id): r for r in records}
  train_ids = [str(i) for i in split["train"]]
  test_ids = [str(i) for i in split["test"]]
  overlap = sorted(set(train_ids) & set(test_ids))
  if overlap:
    raise UserError(f"split file {path!r}: {len(overlap)} ids are in both train and test "
                    f"(e.g. {overlap[:5]}); a domain-shift split must be disjoint.")
  unknown = [i for i in train_ids + test_ids if i not in by_id]
  if unknown:
    raise UserError(f"split file {path!r}: {len(unknown)} ids are not in the data read "
                    f"(e.g. {unknown[:5]}); is the split file for this dataset and split?")
  return [by_id[i] for i in train_ids], [by_id[i] for i in test_ids]


def held_out_movies_split(records: Sequence[VCRExample], fraction: float,
                          seed: int) -> tuple[list[str], list[str]]:
  """(train ids, test ids) with no movie in both: a domain-shift split of VCR.

  Movies are shuffled with the seed and moved to the test side until it holds
  at least `fraction` of the examples (whole movies, so a little more).
  """
  if not 0 < fraction < 1:
    raise UserError(f"held-out fraction {fraction!r} must be in (0, 1).")
  counts: dict[str, int] = {}
  for r in records:
    counts[r.movie] = counts.get(r.movie, 0) + 1
  movies = sorted(counts)    # sorted first: the split must not depend on file order
  test_movies, held = set(), 0
  for j in np.random.default_rng(seed).permutation(len(movies)):
    if held >= fraction * len(records):
      break
    test_movies.add(movies[j])
    held += counts[movies[j]]
  train = [r.id for r in records if r.movie not in test_movies]
  test = [r.id for r in records if r.movie in test_movies]
  return train, test
