"""Starting the VL student (models/vl_student.py) from pretrained checkpoints.

`load_bert_weights` copies a BERT checkpoint's embeddings, encoder and
pooler into the student by name (its parameters have FlaxBertModel's names);
`load_vit_patch_embedding` starts the image tokens from a ViT. Each returns
the new parameters and a `LoadReport` of what was copied, kept and unused.
"""

from __future__ import annotations

import dataclasses
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """Which parameters a load filled ('/'-joined paths)."""
  copied: tuple[str, ...]
  kept: tuple[str, ...]          # the student's, not in the checkpoint: left as they were
  unused: tuple[str, ...]        # the checkpoint's, with no place in the student
  notes: tuple[str, ...] = ()    # copies that were not one to one

  def summary(self) -> str:
    parts = [f"copied {len(self.copied)} tensors", f"kept {len(self.kept)} of the student's "
             f"({_prefixes(self.kept)})", f"{len(self.unused)} of the checkpoint's unused"
             + (f" ({_prefixes(self.unused)})" if self.unused else "")]
    return "; ".join(parts + list(self.notes))


def _prefixes(names) -> str:
  return ", ".join(sorted({n.split("/")[0] for n in names})) or "none"


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def load_bert_weights(params, checkpoint: str,
                      what: str = "config.student.bert_checkpoint") -> tuple[dict, LoadReport]:
  """Copies a BERT checkpoint's weights into the student's by name.

  Args:
    params: the student's parameters (e.g. `init_params`).
    checkpoint: a FlaxBertModel checkpoint: hub id or save_pretrained directory
      (Flax weights, or PyTorch safetensors converted without torch).
  Returns:
    (params with embeddings/encoder/pooler from the checkpoint, LoadReport).
    Text position embeddings take the checkpoint's first rows when the student
    has fewer positions; any other shape mismatch is an error.
  """
  from transformers import FlaxBertModel  # pylint: disable=g-import-not-at-top
  _, bert = params_lib.load_model(FlaxBertModel, checkpoint, ("bert",), jnp.float32, what)
  theirs, ours = _flat(bert), _flat(params)
  new, copied, unused, notes, wrong = dict(ours), [], [], [], []
  for name, w in theirs.items():
    if name not in ours:
      unused.append(name)
      continue
    want = tuple(ours[name].shape)
    w = np.asarray(jax.device_get(w), np.float32)
    if w.shape == want:
      new[name] = w
    elif (name == "embeddings/position_embeddings/embedding" and w.shape[0] > want[0]
          and w.shape[1:] == want[1:]):
      new[name] = w[:want[0]]
      notes.append(f"text positions: the first {want[0]} of the checkpoint's {w.shape[0]}")
    else:
      wrong.append(f"{name} {w.shape} (the student's: {want})")
      continue
    copied.append(name)
  if wrong:
    raise UserError(f"{what}={checkpoint!r}: {len(wrong)} weights differ in shape from the "
                    f"student's, e.g. {wrong[:2]}; build the student with "
                    "vl_student.from_bert_config(checkpoint, ...) or pick a checkpoint of "
                    "the student's sizes.")
  if not copied:
    raise UserError(f"{what}={checkpoint!r}: no weight of it has a name in the student; "
                    "give a BERT checkpoint (FlaxBertModel).")
  report = LoadReport(tuple(copied), tuple(sorted(set(ours) - set(copied))), tuple(unused),
                      tuple(notes))
  logging.info("BERT weights from %s: %s", checkpoint, report.summary())
  return traverse_util.unflatten_dict(new, sep="/"), report


def _resize_grid(pos: np.ndarray, grid: int) -> np.ndarray:
  """[1 + g², H] ViT positions -> [1 + grid², H]: the class row as it is, the
  g x g grid resized bilinearly (half-pixel centres, edges clamped, as
  torch's interpolate(align_corners=False))."""
  g = math.isqrt(pos.shape[0] - 1)
  patch = jax.image.resize(jnp.asarray(pos[1:].reshape(g, g, -1)), (grid, grid, pos.shape[1]),
                           "bilinear", antialias=False)
  return np.concatenate([pos[:1], np.asarray(patch).reshape(grid * grid, -1)])


def load_vit_patch_embedding(params, checkpoint: str,
                             what: str = "config.student.vit_checkpoint"
                             ) -> tuple[dict, LoadReport]:
  """Starts the image tokens from a FlaxViTModel checkpoint (hub id or directory).

  Copies the patch projection, the class token (as the [CLS]-like image token)
  and the position embeddings; when the ViT's patch grid differs from the
  student's, its grid of positions is resized bilinearly (the report says so).
  The image LayerNorm keeps its init: ViT has no counterpart.
  """
  from transformers import FlaxViTModel  # pylint: disable=g-import-not-at-top
  ours = _flat(params)
  if "image_embeddings/patch_embeddings/projection/kernel" not in ours:
    raise UserError(f"{what}={checkpoint!r}: the student has no patch embedding "
                    "(config.student.image_input='features'); a ViT cannot start it.")
  _, vit = params_lib.load_model(FlaxViTModel, checkpoint, ("vit", "deit"), jnp.float32, what,
                                 add_pooling_layer=False)
  theirs = {k: np.asarray(jax.device_get(v), np.float32) for k, v in _flat(vit).items()
            if k.startswith("embeddings/")}
  new, notes = dict(ours), []
  for name, w in theirs.items():
    target = "image_" + name
    want = tuple(ours[target].shape)
    if name == "embeddings/position_embeddings" and w.shape != want and w.shape[2] == want[2]:
      grid, g = math.isqrt(want[1] - 1), math.isqrt(w.shape[1] - 1)
      w = _resize_grid(w[0], grid)[None]
      notes.append(f"image positions: the ViT's {g}x{g} grid interpolated bilinearly to "
                   f"{grid}x{grid}")
    if w.shape != want:
      raise UserError(f"{what}={checkpoint!r}: its {name} has shape {w.shape}, the "
                      f"student's {want}; set config.student.patch_size / hidden_size / "
                      "num_channels to the ViT's.")
    new[target] = w
  report = LoadReport(tuple("image_" + n for n in theirs),
                      tuple(sorted(set(ours) - {"image_" + n for n in theirs})), (), tuple(notes))
  logging.info("ViT patch embedding from %s: %s", checkpoint, report.summary())
  return traverse_util.unflatten_dict(new, sep="/"), report
