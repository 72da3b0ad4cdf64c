"""Student image encoders for zero-shot feature distillation (METHODS.md §4).

A student is any HF Flax vision architecture (ViT/DeiT, ResNet, RegNet) built
from a preset or a checkpoint, plus one linear layer (with bias) from its
feature width m to CLIP's dimension d. `build` gives its parameters,
`features` its pure forward (train mode updates ResNet/RegNet batch
statistics), `write` exports it with `save_pretrained` plus `head.npz` and
`student.json`, which `encoders.load_vision_encoder("student", dir)` reads
back as an image tower *in CLIP space*.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoomshot_jax import io_utils
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.encoders.preprocessing import PreprocessSpec, processor_dict
from zoomshot_jax.encoders.student import FORMAT
from zoomshot_jax.errors import UserError

# (architecture, HF config fields). The paper-scale ones follow the usual
# shapes (DeiT-Ti/S, torchvision ResNets, RegNetY-400MF); `world_*` are the
# demo world's, each under a quarter of the demo CLIP's image tower.
PRESETS = {
    "vit_tiny": ("vit", dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                             intermediate_size=768, patch_size=16)),
    "vit_small": ("vit", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                              intermediate_size=1536, patch_size=16)),
    "resnet18": ("resnet", dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                depths=[2, 2, 2, 2], layer_type="basic")),
    "resnet50": ("resnet", dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                                depths=[3, 4, 6, 3], layer_type="bottleneck")),
    "regnety_400mf": ("regnet", dict(embedding_size=32, hidden_sizes=[48, 104, 208, 440],
                                     depths=[1, 3, 6, 6], groups_width=8, layer_type="y")),
    "world_vit": ("vit", dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                              intermediate_size=144, patch_size=8)),
    "world_resnet": ("resnet", dict(embedding_size=16, hidden_sizes=[16, 32, 64],
                                    depths=[1, 1, 1], layer_type="basic",
                                    downsample_in_first_stage=False)),
}
_CLASSES = {"vit": ("FlaxViTModel", "ViTConfig", ("vit", "deit")),
            "resnet": ("FlaxResNetModel", "ResNetConfig", ("resnet",)),
            "regnet": ("FlaxRegNetModel", "RegNetConfig", ("regnet",))}
# Global average pooling, as the reference's students.
_POOLING = {"vit": "mean", "resnet": "pooler", "regnet": "pooler"}


@dataclasses.dataclass
class Student:
  arch: str                 # "vit" | "resnet" | "regnet"
  pooling: str
  model: Any                # the HF Flax model (for save_pretrained)
  params: dict              # {"encoder": ..., "head": {"kernel" [m, d], "bias" [d]}}
  model_state: dict         # {"batch_stats": ...} for CNNs, else {}
  dim: int                  # m, the encoder's feature width

  @property
  def num_params(self) -> int:
    return count(self.params)


def count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def _load(arch: str, path: str, pooling: str):
  """(model, variables) of an HF checkpoint of `arch` (a hub id or directory)."""
  import transformers  # pylint: disable=g-import-not-at-top
  cls = getattr(transformers, _CLASSES[arch][0])
  extra = {"add_pooling_layer": pooling == "pooler"} if arch == "vit" else {}
  return params_lib.load_model(cls, path, _CLASSES[arch][2], jnp.float32,
                               "config.student.checkpoint", **extra)


def _model(arch: str, config, pooling: str):
  import transformers  # pylint: disable=g-import-not-at-top
  cls = getattr(transformers, _CLASSES[arch][0])
  extra = {"add_pooling_layer": pooling == "pooler"} if arch == "vit" else {}
  return cls(config, _do_init=False, **extra)


def _dim(arch: str, config) -> int:
  return int(config.hidden_size) if arch == "vit" else int(config.hidden_sizes[-1])


def build(cfg, image_size: int, clip_dim: int, seed: int) -> Student:
  """The student of `config.student`: a preset (random init) or a checkpoint
  (an HF vision model, or an earlier stage's export, head included)."""
  import transformers  # pylint: disable=g-import-not-at-top
  if cfg.checkpoint and os.path.exists(os.path.join(cfg.checkpoint, "student.json")):
    return _from_export(cfg.checkpoint, clip_dim)
  if cfg.checkpoint:
    arch = cfg.arch or "vit"
    if arch not in _CLASSES:
      raise UserError(f"config.student.arch={arch!r}: expected one of {sorted(_CLASSES)}.")
    pooling = _POOLING[arch] if cfg.pooling == "default" else cfg.pooling
    model, variables = _load(arch, cfg.checkpoint, pooling)
  else:
    if cfg.preset not in PRESETS:
      raise UserError(f"config.student.preset={cfg.preset!r}: expected one of "
                      f"{sorted(PRESETS)} (or set config.student.checkpoint).")
    arch, fields = PRESETS[cfg.preset]
    pooling = _POOLING[arch] if cfg.pooling == "default" else cfg.pooling
    fields = dict(fields, **dict(cfg.overrides))
    if arch == "vit":
      fields.setdefault("image_size", image_size)
    config = getattr(transformers, _CLASSES[arch][1])(**fields)
    model = _model(arch, config, pooling)
    variables = params_lib.random_params(model, seed)
    if arch == "vit":
      from zoomshot_jax.models import recipe  # pylint: disable=g-import-not-at-top
      variables = recipe.vit_init(variables, seed)
  variables = dict(variables) if "params" in variables else {"params": variables}
  dim = _dim(arch, model.config)
  rng = np.random.default_rng([seed, 1])
  head = {"kernel": (rng.standard_normal((dim, clip_dim)) / np.sqrt(dim)).astype(np.float32),
          "bias": np.zeros(clip_dim, np.float32)}
  state = {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}
  return Student(arch, pooling, model, {"encoder": variables["params"], "head": head}, state,
                 dim)


def _from_export(path: str, clip_dim: int) -> Student:
  meta = io_utils.read_json(os.path.join(path, "student.json"))
  if meta.get("format") != FORMAT:
    raise UserError(f"{path}/student.json has format {meta.get('format')!r}; this version "
                    f"reads {FORMAT!r}.")
  arch, pooling = meta["arch"], meta["pooling"]
  model, variables = _load(arch, path, pooling)
  variables = dict(variables) if "params" in variables else {"params": variables}
  head = io_utils.load_npz(os.path.join(path, "head.npz"))
  dim = _dim(arch, model.config)
  if head["kernel"].shape != (dim, clip_dim):
    raise UserError(f"config.student.checkpoint={path}: its head maps {head['kernel'].shape[0]} "
                    f"-> {head['kernel'].shape[1]} features, but the encoder gives {dim} and "
                    f"the teacher's space has {clip_dim}; export the student again or start "
                    "from its encoder alone.")
  state = {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}
  return Student(arch, pooling, model, {"encoder": variables["params"],
                                        "head": {"kernel": head["kernel"],
                                                 "bias": head["bias"]}}, state, dim)


def features(student: Student, params, model_state, x, train: bool):
  """(encoder features [B, m], new model_state) of normalised images x."""
  module = student.model.module
  if student.arch == "vit":
    out = module.apply({"params": params["encoder"]}, x, deterministic=True)
    h = out.last_hidden_state
    feats = {"mean": lambda: h[:, 1:].mean(1), "cls": lambda: h[:, 0],
             "pooler": lambda: out.pooler_output}[student.pooling]()
    return feats, model_state
  variables = {"params": params["encoder"], **model_state}
  if train:
    out, updates = module.apply(variables, x, deterministic=False, mutable=["batch_stats"])
    model_state = {"batch_stats": updates["batch_stats"]}
  else:
    out = module.apply(variables, x, deterministic=True)
  if student.pooling == "pooler":
    feats = out.pooler_output.reshape(x.shape[0], -1)
  else:
    feats = out.last_hidden_state.mean(axis=(2, 3))
  return feats, model_state


def embed(student: Student, params, model_state, x, train: bool):
  """(CLIP-space features [B, d] = head(encoder features), new model_state)."""
  f, model_state = features(student, params, model_state, x, train)
  return f @ params["head"]["kernel"] + params["head"]["bias"], model_state


def write(path: str, student: Student, params, model_state, spec: PreprocessSpec,
          metadata: dict) -> str:
  """Exports the student to `path` (atomically): save_pretrained + head.npz +
  student.json + the teacher's preprocessor_config.json."""
  params, model_state = jax.device_get((params, model_state))
  variables = {"params": params["encoder"], **model_state}

  def fill(d):
    student.model.save_pretrained(d, params=variables if model_state else params["encoder"])
    io_utils.atomic_write_json(os.path.join(d, "preprocessor_config.json"),
                               processor_dict(spec))
    io_utils.atomic_save_npz(os.path.join(d, "head.npz"),
                             kernel=np.asarray(params["head"]["kernel"], np.float32),
                             bias=np.asarray(params["head"]["bias"], np.float32))
    io_utils.atomic_write_json(os.path.join(d, "student.json"), {
        "format": FORMAT, "arch": student.arch, "pooling": student.pooling,
        "feature_dim": student.dim, "clip_dim": int(np.shape(params["head"]["bias"])[0]),
        "num_params": count(params), **metadata})

  return io_utils.atomic_write_dir(path, fill)
