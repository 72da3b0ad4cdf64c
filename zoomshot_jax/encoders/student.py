"""A distilled student (models/student.py's export) as a frozen image tower in CLIP space.

`load_student(dir)` reads `student.json`, the `save_pretrained` encoder and
`head.npz`: image_features = head(encoder features), [B, d] in the teacher
CLIP's space, so the zero-shot evaluator, `api` and ASIF use it like CLIP's
own image tower (with the teacher's text tower).
"""

from __future__ import annotations

import os

from zoomshot_jax import io_utils
from zoomshot_jax.encoders.vision import VisionEncoder, load_vision_encoder
from zoomshot_jax.errors import UserError

FORMAT = "zoomshot_jax.student/1"   # models/student.py writes it


def load_student(path: str, dtype: str = "float32") -> VisionEncoder:
  meta_path = os.path.join(path, "student.json")
  if not os.path.exists(meta_path):
    raise UserError(f"{path!r} is not an exported student (no student.json); the distill "
                    "program writes one to <workdir>/export/student.")
  meta = io_utils.read_json(meta_path)
  if meta.get("format") != FORMAT:
    raise UserError(f"{meta_path} has format {meta.get('format')!r}; this version reads "
                    f"{FORMAT!r}.")
  base = load_vision_encoder(meta["arch"], path, meta["pooling"], dtype)
  head = io_utils.load_npz(os.path.join(path, "head.npz"))
  if head["kernel"].shape != (base.dim, meta["clip_dim"]):
    raise UserError(f"{path}/head.npz maps {head['kernel'].shape}, but the encoder gives "
                    f"{base.dim} features and student.json says d={meta['clip_dim']}; the "
                    "export is damaged.")

  def forward(variables, x):
    f = base.forward(variables["encoder"], x)
    return f @ variables["head"]["kernel"].astype(f.dtype) + variables["head"]["bias"].astype(
        f.dtype)

  return VisionEncoder(name="student", checkpoint=path, pooling=meta["pooling"],
                       dim=int(meta["clip_dim"]), preprocess=base.preprocess,
                       variables={"encoder": base.variables, "head": head}, forward=forward)
