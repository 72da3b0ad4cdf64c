"""The teacher filter: keep a generated image only if the teacher's zero-shot
top-1 is the class it was generated for (METHODS.md §4's optional filter).

`filter_folder` classifies every image of <images>/<class>/<file> with the
teacher's text tower (one template, the reference's "a photo of a {}."),
then writes <out>/<class>/<file> for the kept ones (hard links where the
file system allows, copies elsewhere) and <out>/manifest.jsonl (every file:
class, prediction, kept), all into a temporary directory renamed at the end.
A class with no image left is an error (naming it) and nothing is written.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from zoomshot_jax import data, evaluation, io_utils
from zoomshot_jax.errors import UserError

TEMPLATE = "a photo of a {}."


def filter_folder(clip, images: str, out: str, mesh, template: str = TEMPLATE,
                  batch_size: int = 256, classnames_file: str = "") -> dict:
  """Returns {"kept": {class: n}, "total": {class: n}}; writes `out`."""
  names, files, labels = data.sources.list_folder(images, verify=True)
  source = data.folder_source(images)
  prompts = evaluation.get_prompts("folder:" + images, len(names), names, classnames_file, "",
                                   (template,))
  w = evaluation.build_classifier(clip, prompts)
  res = evaluation.evaluate(clip.image_features, clip.params, clip.preprocess, w,
                            clip.logit_scale, source, mesh, batch_size, keep_logits=True)
  labels = np.asarray(labels)
  pred = np.asarray(res.logits).argmax(-1)
  kept_mask = pred == labels
  classes = sorted({os.path.basename(os.path.dirname(f)) for f in files})
  total = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
  kept = {c: int(kept_mask[labels == i].sum()) for i, c in enumerate(classes)}
  empty = [c for c, n in kept.items() if n == 0]
  if empty:
    raise UserError(f"the teacher filter keeps no image of class(es) {empty[:10]} in {images} "
                    "(the teacher never predicts them there): generate more or better images "
                    "for them, or train on the unfiltered folder.")

  def fill(d):
    rows = []
    for f, y, p, k in zip(files, labels, pred, kept_mask):
      rel = os.path.relpath(f, images)
      rows.append({"file": rel, "class": prompts.classnames[y], "predicted":
                   prompts.classnames[p], "kept": bool(k)})
      if k:
        dst = os.path.join(d, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
          os.link(f, dst)
        except OSError:
          shutil.copy2(f, dst)
    io_utils.atomic_write_bytes(os.path.join(d, "manifest.jsonl"), "".join(
        json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

  io_utils.atomic_write_dir(out, fill)
  return {"kept": kept, "total": total}
