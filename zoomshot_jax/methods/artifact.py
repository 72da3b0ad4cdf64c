"""The exported mapping: one small self-describing .npz file.

"Any vision encoder + this file = a zero-shot classifier": it holds h (and g)
folded to raw features, the alignment scales, and metadata naming the
encoders (registry name, checkpoint, pooling, dims, weight fingerprints), so
that `zoomshot_jax.api.load_mapped(path)` can rebuild the classifier and
refuse other weights than the ones the map was trained for.

Arrays: h_kernel [m, d], h_bias [d] (and g_kernel [d, m], g_bias [m] for
Zoom-shot), float32, acting on raw features: CLIP-space feature = V(x) @
h_kernel + h_bias. `metadata` is a JSON string (no pickle needed to read).
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from zoomshot_jax import io_utils
from zoomshot_jax.errors import UserError

FORMAT = "zoomshot_jax.mapping/1"


def save(path: str, maps: dict, metadata: dict) -> None:
  """maps: {"h": {"kernel", "bias"}, optionally "g"} on raw features."""
  arrays = {f"{name}_{leaf}": np.asarray(p[leaf], np.float32)
            for name, p in maps.items() for leaf in ("kernel", "bias")}
  meta = {"format": FORMAT, **metadata}
  io_utils.atomic_save_npz(path, metadata=np.array(json.dumps(meta, sort_keys=True)), **arrays)


def load(path: str) -> tuple[dict, dict]:
  """(maps {"h": {...}, "g": {...}?}, metadata) of an exported mapping."""
  if not tf.io.gfile.exists(path):
    raise UserError(f"mapping file {path!r} does not exist; the 'export' stage writes "
                    "<workdir>/export/mapping.npz.")
  try:
    arrays = io_utils.load_npz(path)
    meta = json.loads(str(arrays.pop("metadata")))
  except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path!r} is not a zoomshot_jax mapping file ({e}).") from e
  if meta.get("format") != FORMAT:
    raise UserError(f"{path!r} has format {meta.get('format')!r}; this version reads "
                    f"{FORMAT!r}.")
  maps = {}
  for name in ("h", "g"):
    if f"{name}_kernel" in arrays:
      maps[name] = {"kernel": arrays[f"{name}_kernel"], "bias": arrays[f"{name}_bias"]}
  m, d = meta["vision"]["dim"], meta["clip"]["dim"]
  if maps["h"]["kernel"].shape != (m, d):
    raise UserError(f"{path!r}: h_kernel has shape {maps['h']['kernel'].shape}, the "
                    f"metadata says ({m}, {d}); the file is damaged.")
  return maps, meta
