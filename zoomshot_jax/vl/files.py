"""Reading the VL tasks' files: local paths with the standard library, others
(`gs://`) through `tf.io.gfile`, imported only then (importing TensorFlow
costs seconds a local read does not need); image checks by folder listing."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from zoomshot_jax.errors import UserError


def _remote(path: str) -> bool:
  return "://" in path


def _read_text(path: str) -> str:
  if _remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  if not os.path.isfile(path):
    raise UserError(f"file {path!r} does not exist; check the path.")
  with open(path, encoding="utf-8") as f:
    return f.read()


def read_json(path: str):
  """A JSON file's content; UserError naming the file when it is not JSON."""
  try:
    return json.loads(_read_text(path))
  except json.JSONDecodeError as e:
    raise UserError(f"file {path!r} is not valid JSON ({e}).") from e


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
  """[(1-based line number, object)] of a JSON-lines file, blank lines skipped."""
  rows = []
  for n, line in enumerate(_read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path!r} line {n} is not JSON ({e}).") from e
    if not isinstance(obj, dict):
      raise UserError(f"{path!r} line {n} is {type(obj).__name__}, expected a JSON object.")
    rows.append((n, obj))
  return rows


def _isdir(path: str) -> bool:
  if _remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.isdir(path)
  return os.path.isdir(path)


def check_files_exist(paths: Sequence[str], what: str, fix: str) -> None:
  """UserError saying how many of `paths` are missing, with the first few.

  One directory listing per folder; remote paths are not checked.
  """
  listings: dict[str, set[str]] = {}
  missing = []
  for p in paths:
    if _remote(p):
      continue
    d, base = os.path.split(p)
    if d not in listings:
      listings[d] = set(os.listdir(d)) if os.path.isdir(d) else set()
    if base not in listings[d]:
      missing.append(p)
  if missing:
    raise UserError(f"{len(missing)} of {len(paths)} {what} are missing, e.g. "
                    f"{missing[:3]}; {fix}")


def _field(obj: dict, key: str, types, where: str):
  if key not in obj:
    raise UserError(f"{where} has no field {key!r}; is this the right file?")
  value = obj[key]
  # bool is an int to Python, never a valid id or label here.
  if not isinstance(value, types) or isinstance(value, bool):
    names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
    raise UserError(f"{where}: field {key!r} is {value!r}, expected {names}.")
  return value
