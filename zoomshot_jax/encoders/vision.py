"""Frozen vision encoders from HF Flax: ViT/DeiT, DINOv2, BEiT, ResNet, RegNet.

Each loader returns a `VisionEncoder` whose `image_features(variables, images)`
is a pure, jit-able function: [batch, H, W, 3] pixels in [0, 255] (uint8 from
the input pipeline, already resized and cropped to `preprocess.image_size`) ->
[batch, dim] float32 features. The Flax modules take NHWC directly; we call
them without the NCHW wrapper the HF `__call__` adds for PyTorch parity.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.preprocessing import PreprocessSpec, load_spec
from zoomshot_jax.errors import UserError


@dataclasses.dataclass
class VisionEncoder:
  """A frozen image encoder: pure feature function + its variables."""

  name: str
  checkpoint: str
  pooling: str
  dim: int
  preprocess: PreprocessSpec
  variables: Any
  # (variables, normalised float images [B, H, W, 3]) -> [B, dim]
  forward: Callable[[Any, jax.Array], jax.Array]

  def image_features(self, variables, images):
    """[batch, H, W, 3] pixels in [0, 255] -> [batch, dim] float32."""
    x = self.preprocess.normalize(images)
    return self.forward(variables, x).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Arch:
  model_cls: str            # transformers class name
  model_types: tuple        # accepted config.model_type values
  poolings: tuple           # the first is the default
  token_layout: bool        # True: [B, tokens, D] with CLS first; False: CNN


ARCHS = {
    # DeiT checkpoints without a distillation token are ViT checkpoints.
    "vit": _Arch("FlaxViTModel", ("vit", "deit"), ("cls", "mean", "pooler"), True),
    "dinov2": _Arch("FlaxDinov2Model", ("dinov2",), ("cls", "mean", "pooler"), True),
    "beit": _Arch("FlaxBeitModel", ("beit", "data2vec-vision"), ("pooler", "cls", "mean"), True),
    "resnet": _Arch("FlaxResNetModel", ("resnet",), ("pooler", "mean"), False),
    "regnet": _Arch("FlaxRegNetModel", ("regnet",), ("pooler", "mean"), False),
}


def _forward(module, pooling: str, token_layout: bool, variables, x):
  out = module.apply(variables, x, deterministic=True)
  if not token_layout:
    # HF returns NCHW maps and a [B, C, 1, 1] pooled output (PyTorch parity).
    if pooling == "pooler":
      return out.pooler_output.reshape(x.shape[0], -1)
    return out.last_hidden_state.mean(axis=(2, 3))
  if pooling == "pooler":
    return out.pooler_output
  if pooling == "cls":
    return out.last_hidden_state[:, 0]
  return out.last_hidden_state[:, 1:].mean(axis=1)  # mean of patch tokens


def load_vision_encoder(name: str, checkpoint: str, pooling: str = "default",
                        dtype: str = "float32", random_init: bool = False,
                        seed: int = 0) -> VisionEncoder:
  """Loads a registered vision encoder from a hub id or a local directory.

  Args:
    name: one of `ARCHS` (use `encoders.load_vision_encoder` for checked names).
    checkpoint: hub id or directory written by `save_pretrained`. With
      `random_init`, a directory or hub id whose config.json is used alone.
    pooling: "cls", "mean" (of patch tokens / spatial positions), "pooler", or
      "default" (the first of the architecture's list).
    dtype: compute and parameter dtype ("float32" or "bfloat16").
  """
  import transformers  # pylint: disable=g-import-not-at-top

  arch = ARCHS[name]  # names are checked by the registry (encoders/__init__.py)
  pooling = arch.poolings[0] if pooling == "default" else pooling
  if pooling not in arch.poolings:
    raise UserError(f"pooling={pooling!r} is not available for {name}; "
                    f"choose one of {list(arch.poolings)}.")
  cls = getattr(transformers, arch.model_cls)
  jdtype = params_lib.compute_dtype(dtype)
  extra = {"add_pooling_layer": pooling == "pooler"} if name == "vit" else {}
  model, variables = params_lib.load_model(
      cls, checkpoint, arch.model_types, jdtype, f"{name} checkpoint", random_init, seed,
      **extra)
  if "params" not in variables:  # models without mutable collections
    variables = {"params": variables}
  variables = params_lib.cast_floating(variables, jdtype)
  config = model.config
  dim = int(config.hidden_sizes[-1]) if not arch.token_layout else int(config.hidden_size)
  spec = load_spec(checkpoint, default_size=int(getattr(config, "image_size", 224)))
  forward = functools.partial(_forward, model.module, pooling, arch.token_layout)
  return VisionEncoder(name=name, checkpoint=checkpoint, pooling=pooling, dim=dim,
                       preprocess=spec, variables=variables, forward=forward)
