"""Writes that never leave a half-written file looking complete.

Every output goes to a temporary name in the same directory and is renamed
into place once whole. `tf.io.gfile` makes the same code work on local disks
and on GCS (`gs://` workdirs on TPU pods).
"""

from __future__ import annotations

import io
import json
import os
import uuid

import numpy as np
import tensorflow as tf


def _tmp_name(path: str) -> str:
  d, base = os.path.split(path)
  return os.path.join(d, f".{base}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: str, data: bytes) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = _tmp_name(path)
  with tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(data)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def atomic_write_json(path: str, obj) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write_bytes(path, buf.getvalue())


def atomic_save_npy(path: str, array: np.ndarray) -> None:
  buf = io.BytesIO()
  np.save(buf, array)
  atomic_write_bytes(path, buf.getvalue())


def load_npy(path: str) -> np.ndarray:
  with tf.io.gfile.GFile(path, "rb") as f:
    return np.load(io.BytesIO(f.read()))


def load_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an .npz (read whole: gfile paths cannot be memory-mapped)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    with np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
      return {k: z[k] for k in z.files}


def read_json(path: str):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def atomic_write_dir(out_dir: str, write) -> str:
  """Calls write(tmp_dir), then renames it to out_dir: never a half-written model.

  Local paths only (a directory rename is not atomic on GCS).
  """
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)   # mkdtemp's 0700 would hide the result from others
  try:
    write(tmp)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir
