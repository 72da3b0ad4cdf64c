"""Parameter trees of HF Flax models: loading, random init, casting, hashing."""

from __future__ import annotations

import hashlib
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from zoomshot_jax.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  if name not in DTYPES:
    raise UserError(f"dtype {name!r} is not one of {sorted(DTYPES)}.")
  return DTYPES[name]


def _expected_shapes(model):
  """The parameter tree's shapes and dtypes, as `init_weights` would make them.

  HF's constructor has already traced `init_weights` for exactly this tree
  (`params_shape_tree`); tracing it again doubled the cost of building every
  model (tests/test_distill.py, tiny and preset-sized students: 60 s -> 46 s).
  """
  shapes = getattr(model, "params_shape_tree", None)
  if shapes is not None:
    return shapes
  return jax.eval_shape(lambda rng: model.init_weights(rng, model.input_shape),
                        jax.random.PRNGKey(0))


def check_complete(model, params, checkpoint: str):
  """Checks loaded params against the architecture; drops unused extras.

  `_do_init=False` loading does not complain about missing weights; a
  checkpoint of another head or size would otherwise fail deep inside apply.
  """
  shapes = _expected_shapes(model)
  expected = {jax.tree_util.keystr(p): l.shape
              for p, l in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  got = {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing = sorted(set(expected) - set(got))
  if missing:
    raise UserError(
        f"checkpoint {checkpoint!r} lacks {len(missing)} weights this model "
        f"needs, e.g. {missing[:3]}; is it a checkpoint of this architecture?")
  for k, shape in expected.items():
    if tuple(got[k].shape) != tuple(shape):
      raise UserError(f"checkpoint {checkpoint!r}: weight {k} has shape "
                      f"{tuple(got[k].shape)}, the config implies {tuple(shape)}.")
  if len(got) == len(expected):
    return params
  return jax.tree_util.tree_map_with_path(lambda p, _: got[jax.tree_util.keystr(p)], shapes)


def random_params(model, seed: int = 0, scale: float = 0.02):
  """Random parameters for an HF Flax model built with `_do_init=False`.

  HF's own `init_weights` runs the whole network (seconds of compile even for
  a tiny model); the shapes alone come from `jax.eval_shape` for free, and we
  fill them in numpy: N(0, scale) for kernels and embeddings, ones for norm
  scales and running variances, zeros for biases and running means. This is
  the init of the HF models up to the exact std, which does not matter for
  tests and throughput benchmarks.

  Returns the same tree `from_pretrained(..., _do_init=False)` returns.
  """
  shapes = _expected_shapes(model)
  rng = np.random.default_rng(seed)
  logit_scale = getattr(model.config, "logit_scale_init_value", None)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "logit_scale" and logit_scale is not None:
      return np.full(leaf.shape, logit_scale, leaf.dtype)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    if "lambda" in name:  # BEiT / DINOv2 layer scale
      return np.full(leaf.shape, 0.1, leaf.dtype)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, leaf.dtype)
    return (rng.standard_normal(leaf.shape) * scale).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def cast_floating(tree, dtype):
  """Casts floating leaves (not integer buffers) to `dtype`."""
  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def fingerprint(tree, extra: str = "") -> str:
  """A sha256 over every leaf's path, shape, dtype and bytes (+ `extra`).

  Used as a cache key: a retrained checkpoint saved to the same directory
  gets a new fingerprint, which a path or mtime would not guarantee.
  """
  h = hashlib.sha256(extra.encode())
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    arr = np.asarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((arr.shape, arr.dtype)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def load_tokenizer(checkpoint: str, what: str):
  """The checkpoint's own tokenizer, or a UserError saying how to provide one."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

  try:
    return AutoTokenizer.from_pretrained(checkpoint)
  except (OSError, ValueError, TypeError) as e:
    raise UserError(
        f"{what} {checkpoint!r}: could not load its tokenizer "
        f"({str(e).splitlines()[0]}). Save the tokenizer next to the weights "
        "with tokenizer.save_pretrained(dir).") from e


def load_config(name_or_path: str, expected_types: tuple[str, ...], what: str):
  """The checkpoint's HF config, checked to be of one of `expected_types`."""
  from transformers import AutoConfig  # pylint: disable=g-import-not-at-top

  if os.path.isdir(name_or_path) and not os.path.exists(
      os.path.join(name_or_path, "config.json")):
    # HF's own error here lists every model type it knows (~5000 characters).
    raise UserError(f"{what}={name_or_path!r}: the directory has no config.json; give "
                    "a directory written by save_pretrained.")
  try:
    config = AutoConfig.from_pretrained(name_or_path)
  except (OSError, ValueError) as e:
    raise UserError(
        f"{what}={name_or_path!r}: no model config found. Give a local "
        "directory written by save_pretrained (with config.json) or a hub id "
        f"that is reachable or already in the HF cache. ({str(e).splitlines()[0]})"
    ) from e
  if config.model_type not in expected_types:
    raise UserError(
        f"{what}={name_or_path!r} is a {config.model_type!r} checkpoint, but "
        f"this encoder expects one of {list(expected_types)}; pick the matching "
        "encoder name."
    )
  return config


def load_model(model_cls, name_or_path: str, expected_types: tuple[str, ...], dtype,
               what: str, random_init: bool = False, seed: int = 0, **model_kwargs):
  """`(model, params)` of a checkpoint, or random params of its config.

  Loaded params are checked against the architecture (`check_complete`).
  Flax weights load with `_do_init=False`; a checkpoint with only PyTorch
  weights (DINOv2 and many others on the hub) is converted without a random
  init: safetensors with no extra dependency, legacy .bin files with torch.
  """
  config = load_config(name_or_path, expected_types, what)
  if random_init:
    model = model_cls(config, _do_init=False, dtype=dtype, **model_kwargs)
    return model, random_params(model, seed)
  model, params = _from_pretrained(model_cls, name_or_path, config, dtype, what, **model_kwargs)
  return model, check_complete(model, params, name_or_path)


# HF's weight file names, (kind, single file, index of shards), in our order
# of preference: Flax as HF prefers it, then PyTorch safetensors (readable
# without torch), then PyTorch pickles (torch.load).
_WEIGHT_FILES = (("flax", "flax_model.msgpack", "flax_model.msgpack.index.json"),
                 ("safetensors", "model.safetensors", "model.safetensors.index.json"),
                 ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"))


def _find_weights(name_or_path: str, commit_hash):
  """`(kind, path, sharded)` of the checkpoint's preferred weights.

  kind is "flax", "safetensors" (PyTorch layout) or "bin"; `path` is a local
  file (hub files are downloaded to the HF cache, as `from_pretrained` does)
  or an index of shards; `(None, None, False)` when there are no weights.
  """
  from transformers.utils import cached_file  # pylint: disable=g-import-not-at-top

  for kind, single, index in _WEIGHT_FILES:
    for filename, sharded in ((single, False), (index, True)):
      path = cached_file(name_or_path, filename, _commit_hash=commit_hash,
                         _raise_exceptions_for_missing_entries=False)
      if path is None:
        continue
      if kind == "safetensors" and not sharded:
        from safetensors import safe_open  # pylint: disable=g-import-not-at-top
        with safe_open(path, framework="numpy") as f:
          fmt = (f.metadata() or {}).get("format")
        if fmt not in ("pt", None):  # Flax params saved with safe_serialization
          return "flax", path, False
      return kind, path, sharded
  return None, None, False


def _from_pretrained(model_cls, name_or_path, config, dtype, what, **model_kwargs):
  """`(model with _do_init=False, params)`: Flax weights through HF's
  `from_pretrained`, PyTorch weights through `_convert_pytorch`."""
  from transformers.utils.hub import get_checkpoint_shard_files  # pylint: disable=g-import-not-at-top

  commit_hash = getattr(config, "_commit_hash", None)
  try:
    kind, path, sharded = _find_weights(name_or_path, commit_hash)
    if kind in ("safetensors", "bin"):
      if kind == "bin":
        _require_torch(name_or_path, what, os.path.basename(path))
      files = (get_checkpoint_shard_files(name_or_path, path, _commit_hash=commit_hash)[0]
               if sharded else [path])
    else:  # Flax weights, or none: HF loads them or says what is missing
      return model_cls.from_pretrained(name_or_path, config=config, _do_init=False,
                                       dtype=dtype, **model_kwargs)
  except OSError as e:
    raise UserError(f"{what}={name_or_path!r}: {str(e).splitlines()[0]}") from e
  model = model_cls(config, _do_init=False, dtype=dtype, **model_kwargs)
  try:
    params = _convert_pytorch(model, files, kind)
  except ValueError as e:  # HF's converter on a weight of the wrong shape
    raise UserError(f"{what}={name_or_path!r}: {str(e).splitlines()[0]}") from e
  logging.info("Converted the PyTorch %s weights of %s to Flax (%d file(s); every run: "
               "save_pretrained the Flax params to skip this).", kind, name_or_path, len(files))
  return model, params


def _require_torch(name_or_path, what, filename):
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise UserError(
        f"{what}={name_or_path!r} has only PyTorch .bin weights ({filename}); converting "
        "them needs torch: pip install torch (a CPU build is enough)."
    ) from None


def _convert_pytorch(model, files, kind):
  """Flax params of `model` from PyTorch weight files, without a random init.

  HF's converter renames keys and transposes kernels against the model's
  params, of which it reads only the tree and shapes: the abstract tree that
  every `_do_init=False` model holds (`params_shape_tree`) serves. Its own
  entry points read `model.params` (which `_do_init=False` forbids) and need
  torch for shards, so we read the files here and call the shared converter.
  """
  from flax.core import unfreeze  # pylint: disable=g-import-not-at-top
  from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax  # pylint: disable=g-import-not-at-top

  target = types.SimpleNamespace(params=unfreeze(model.params_shape_tree),
                                 base_model_prefix=model.base_model_prefix)
  # On the host, as HF keeps `_do_init=False` Flax weights: converting on the
  # accelerator would hold two copies of the checkpoint there.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    state = {}
    for path in files:
      state.update(_read_pytorch(path, kind))
    return convert_pytorch_state_dict_to_flax(state, target)


def _read_pytorch(path, kind):
  """{PyTorch key: tensor} of one weight file (a shard or the whole model)."""
  if kind == "safetensors":
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    # The flax reader, not numpy's: numpy has no bfloat16.
    with safe_open(path, framework="flax") as f:
      return {k: f.get_tensor(k) for k in f.keys()}
  import torch  # pylint: disable=g-import-not-at-top

  # transformers' rule (CVE-2025-32434: torch.load is unsafe before 2.6 even
  # with weights_only), checked here because the binaries run transformers
  # with USE_TORCH=0 (main.py), where its own check reports every torch as old.
  if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
    raise UserError(f"{path}: reading PyTorch .bin weights safely needs torch >= 2.6 "
                    f"(this is {torch.__version__}): pip install -U torch, or convert the "
                    "checkpoint to safetensors.")
  state = torch.load(path, map_location="cpu", weights_only=True)
  # As numpy arrays, so HF's converter needs no torch; views of torch's memory,
  # bfloat16 too (through its bits, as ml_dtypes' bfloat16), not float32
  # copies as HF makes: half the host memory for a large bfloat16 checkpoint.
  return {k: (v.view(torch.int16).numpy().view(jnp.bfloat16) if v.dtype == torch.bfloat16
              else v.numpy()) for k, v in state.items()}
