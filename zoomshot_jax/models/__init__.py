"""Trainable networks and their training recipes (docs/architecture.md).

`encoders/` is the registry of *frozen* encoders; the networks here are the
ones a program trains. Each module gives a builder (an HF Flax model from a
config group), a loss in the shared step's form
`loss_fn(params, model_state, batch, frozen, rng)`, a writer in
`save_pretrained` format (so the trained network loads through `encoders/`
like any checkpoint), and `train(...)`, which runs `training.fit`.

  tiny_clip    the demo world's miniature CLIP (ViT image tower, word-level
               text tower), contrastive on captions
  tiny_resnet  the demo world's miniature ResNet, multi-label attribute presence
  student      feature-distillation students: HF Flax ViT/ResNet/RegNet
               presets + a linear head into CLIP's space (trained by
               programs/distill.py)
"""

from zoomshot_jax.models import student, tiny_clip, tiny_resnet

MODELS = {"student": student, "tiny_clip": tiny_clip, "tiny_resnet": tiny_resnet}

__all__ = ["MODELS", "student", "tiny_clip", "tiny_resnet"]
