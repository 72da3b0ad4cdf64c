"""Checkpoints with only PyTorch weights load without torch (encoders/params.py).

The PyTorch checkpoints are written here from the tiny Flax ones with numpy
and safetensors alone, in the layout torch's `save_pretrained` writes: keys
`module.path.weight`, Dense kernels as [out, in], convolutions as OIHW,
LayerNorm/BatchNorm `weight`/`bias`, BatchNorm `running_mean`/`running_var`/
`num_batches_tracked`. The mapping is written out independently of HF's
converter, and pinned by PyTorch key names read off HF's PyTorch modules.
"""

import json
import logging
import os
import shutil
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pytest
import transformers
from flax import traverse_util
from safetensors.numpy import save_file

from zoomshot_jax.encoders import load_clip, load_vision_encoder
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError


@pytest.fixture(scope="module")
def images():
  """[3, 32, 32, 3] uint8 at the tiny checkpoints' input size."""
  return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def no_random_init(monkeypatch):
  """Conversion may trace the init for shapes, never run it on real values
  (HF's own PyTorch path initialises a random model first: seconds)."""
  def forbid(*args, **kwargs):
    raise AssertionError("random params were drawn")
  monkeypatch.setattr(params_lib, "random_params", forbid)
  for name in ("FlaxCLIPModel", "FlaxDinov2Model", "FlaxResNetModel"):
    cls = getattr(transformers, name)
    init = cls.init_weights

    def traced_only(self, rng, *args, _init=init, **kwargs):
      assert isinstance(rng, jax.core.Tracer), "init_weights ran on a concrete key"
      return _init(self, rng, *args, **kwargs)
    monkeypatch.setattr(cls, "init_weights", traced_only)


def _flax_weights(checkpoint):
  with open(os.path.join(checkpoint, "flax_model.msgpack"), "rb") as f:
    return flax.serialization.msgpack_restore(f.read())


def _pytorch_state_dict(variables):
  """{PyTorch key: array} of HF Flax weights ({"params", "batch_stats"} for
  models with BatchNorm), as the PyTorch class of the model names them."""
  has_stats = "batch_stats" in variables
  state = {}
  for path, x in traverse_util.flatten_dict(variables).items():
    x = np.asarray(x)
    if has_stats:
      collection, path = path[0], path[1:]
      if collection == "batch_stats":
        *module, stat = path
        state[".".join(module + ["running_" + stat])] = x  # mean, var
        state[".".join(module + ["num_batches_tracked"])] = np.array(0, np.int64)
        continue
    *module, leaf = path
    if leaf == "kernel" and x.ndim == 4:
      leaf, x = "weight", x.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif leaf == "kernel":
      leaf, x = "weight", x.T  # [in, out] -> torch.nn.Linear's [out, in]
    elif leaf in ("scale", "embedding"):  # LayerNorm / BatchNorm, nn.Embedding
      leaf = "weight"
    state[".".join(module + [leaf])] = np.array(x, order="C")  # keeps 0-d (logit_scale)
  return state


def _save_pytorch(src, dst, state, shards=1, save=None):
  """Copies `src` (config, tokenizer, preprocessor) to `dst` without its Flax
  weights and writes `state` as model.safetensors or as `shards` shards with
  model.safetensors.index.json, as transformers does; with `save` (torch.save)
  as pytorch_model.bin files instead, `state` holding torch tensors."""
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("flax_model.msgpack"))
  if save is None:
    stem, ext = "model", "safetensors"
    save = lambda part, path: save_file(part, path, metadata={"format": "pt"})
  else:
    stem, ext = "pytorch_model", "bin"
  if shards == 1:
    save(state, os.path.join(dst, f"{stem}.{ext}"))
    return dst
  keys = sorted(state)
  weight_map = {}
  for i, part in enumerate(np.array_split(np.arange(len(keys)), shards)):
    name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
    save({keys[j]: state[keys[j]] for j in part}, os.path.join(dst, name))
    weight_map.update({keys[j]: name for j in part})
  total = sum(x.nbytes for x in state.values())
  with open(os.path.join(dst, f"{stem}.{ext}.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  return dst


def _assert_same_tree(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(fa) == set(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def _assert_features_equal(fn, ours, ref, *args):
  """fn(ours, *args) == fn(ref, *args) to atol 1e-5: the converted weights give
  the originals' features. One jit of the originals' `fn` serves both."""
  fn = jax.jit(fn)
  got, want = np.asarray(fn(ours, *args)), np.asarray(fn(ref, *args))
  assert np.abs(want).max() > 1e-2  # features, not zeros
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_clip_from_pytorch_safetensors(tiny_clip_dir, tmp_path, images, caplog):
  state = _pytorch_state_dict(_flax_weights(tiny_clip_dir))
  # PyTorch names and layouts (CLIPModel in modeling_clip.py), width 32,
  # projection 16, patches 8x8.
  assert state["vision_model.embeddings.patch_embedding.weight"].shape == (32, 3, 8, 8)
  assert state["visual_projection.weight"].shape == (16, 32)
  for key in ("vision_model.embeddings.class_embedding", "vision_model.pre_layrnorm.weight",
              "text_model.embeddings.token_embedding.weight",
              "text_model.encoder.layers.1.self_attn.q_proj.bias",
              "text_model.final_layer_norm.bias", "logit_scale"):
    assert key in state, key
  # Older hub checkpoints also store this buffer; the loader must drop it.
  state["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
  checkpoint = _save_pytorch(tiny_clip_dir, str(tmp_path / "clip_pt"), state)

  with caplog.at_level(logging.INFO):
    ours = load_clip(checkpoint)
  assert any("PyTorch safetensors" in r.getMessage() for r in caplog.records)
  ref = load_clip(tiny_clip_dir)
  _assert_same_tree(ours.params, ref.params)
  assert ours.logit_scale == pytest.approx(ref.logit_scale, rel=1e-6)
  _assert_features_equal(ref.image_features, ours.params, ref.params, images)
  tokens = ours.tokenize(["a photo of a dog", "cat"])
  _assert_features_equal(ref.text_features, ours.params, ref.params, tokens["input_ids"],
                         tokens["attention_mask"])


@pytest.mark.parametrize("shards", [1, 2])
def test_dinov2_from_pytorch_safetensors(tiny_vision_dirs, tmp_path, images, shards):
  src = tiny_vision_dirs["dinov2"]
  state = _pytorch_state_dict(_flax_weights(src))
  # Dinov2Model (modeling_dinov2.py) has no "dinov2." prefix of its own.
  assert state["embeddings.patch_embeddings.projection.weight"].shape == (32, 3, 8, 8)
  assert state["encoder.layer.0.mlp.fc1.weight"].shape == (64, 32)
  for key in ("embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings",
              "encoder.layer.1.attention.attention.query.weight",
              "encoder.layer.0.layer_scale1.lambda1", "encoder.layer.0.norm1.weight",
              "layernorm.bias"):
    assert key in state, key
  checkpoint = _save_pytorch(src, str(tmp_path / "dinov2_pt"), state, shards=shards)
  assert not os.path.exists(os.path.join(checkpoint, "flax_model.msgpack"))

  ours = load_vision_encoder("dinov2", checkpoint, pooling="mean")
  ref = load_vision_encoder("dinov2", src, pooling="mean")
  _assert_same_tree(ours.variables, ref.variables)
  if shards == 1:  # equal trees give equal features; one compile is enough
    _assert_features_equal(ref.image_features, ours.variables, ref.variables, images)


def test_hub_ids_resolve_through_the_hf_cache(tiny_vision_dirs, tmp_path):
  """A hub id whose files sit in the HF cache (offline: no download), single
  and sharded. In a subprocess: huggingface_hub and transformers read the
  cache directory and offline mode when they are imported."""
  src = tiny_vision_dirs["dinov2"]
  state = _pytorch_state_dict(_flax_weights(src))
  commit = "0123456789abcdef0123456789abcdef01234567"
  for name, shards in (("tiny", 1), ("tiny-sharded", 2)):
    repo = tmp_path / "hub" / f"models--acme--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _save_pytorch(src, str(repo / "snapshots" / commit), state, shards=shards)
  ref = load_vision_encoder("dinov2", src).variables
  np.savez(tmp_path / "ref.npz", *jax.tree.leaves(ref))
  script = (
      "import sys, jax, numpy as np\n"
      "from zoomshot_jax.encoders import load_vision_encoder\n"
      "ref = list(np.load(sys.argv[1]).values())\n"
      "for repo in ('acme/tiny', 'acme/tiny-sharded'):\n"
      "  got = jax.tree.leaves(load_vision_encoder('dinov2', repo).variables)\n"
      "  assert len(got) == len(ref), repo\n"
      "  for a, b in zip(got, ref):\n"
      "    np.testing.assert_array_equal(np.asarray(a), b, err_msg=repo)\n")
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
             HF_HOME=str(tmp_path / "hf_home"), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ref.npz")], env=env,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-3000:]


def test_resnet_batch_norm_from_pytorch_safetensors(tiny_vision_dirs, tmp_path):
  """BatchNorm statistics become `batch_stats`; num_batches_tracked is dropped."""
  src = tiny_vision_dirs["resnet"]
  state = _pytorch_state_dict(_flax_weights(src))
  assert state["embedder.embedder.convolution.weight"].shape == (8, 3, 7, 7)
  assert "embedder.embedder.normalization.running_var" in state
  checkpoint = _save_pytorch(src, str(tmp_path / "resnet_pt"), state)
  ours = load_vision_encoder("resnet", checkpoint)
  ref = load_vision_encoder("resnet", src)
  _assert_same_tree(ours.variables, ref.variables)
  assert set(ours.variables) == {"params", "batch_stats"}


def test_flax_weights_take_precedence(tiny_vision_dirs, tmp_path):
  src = tiny_vision_dirs["dinov2"]
  checkpoint = str(tmp_path / "both")
  shutil.copytree(src, checkpoint)
  zeros = {k: np.zeros_like(v) for k, v in _pytorch_state_dict(_flax_weights(src)).items()}
  save_file(zeros, os.path.join(checkpoint, "model.safetensors"), metadata={"format": "pt"})
  _assert_same_tree(load_vision_encoder("dinov2", checkpoint).variables,
                    load_vision_encoder("dinov2", src).variables)


@pytest.mark.parametrize("shards", [1, 2])
def test_dinov2_from_pytorch_bin_with_torch(tiny_vision_dirs, tmp_path, shards):
  """Legacy .bin weights (torch.save's pickles, sharded as transformers shards
  them) read with torch but converted without transformers' torch side (the
  binaries run it with USE_TORCH=0); a bfloat16 weight keeps its values."""
  torch = pytest.importorskip("torch")
  src = tiny_vision_dirs["dinov2"]
  state = _pytorch_state_dict(_flax_weights(src))
  key = "encoder.layer.0.mlp.fc1.weight"
  tensors = {k: torch.from_numpy(v) for k, v in state.items()}
  tensors[key] = tensors[key].to(torch.bfloat16)
  checkpoint = _save_pytorch(src, str(tmp_path / "dinov2_bin"), tensors, shards, torch.save)

  ours = traverse_util.flatten_dict(load_vision_encoder("dinov2", checkpoint).variables)
  ref = traverse_util.flatten_dict(load_vision_encoder("dinov2", src).variables)
  assert set(ours) == set(ref)
  fc1 = ("params", "encoder", "layer", "0", "mlp", "fc1", "kernel")
  for k in ref:
    want = np.asarray(ref[k])
    if k == fc1:  # the checkpoint's bfloat16 values, exactly (loaded as float32)
      want = want.astype(jax.numpy.bfloat16).astype(want.dtype)
      assert not np.array_equal(want, np.asarray(ref[k]))  # rounding changed it
    np.testing.assert_array_equal(np.asarray(ours[k], want.dtype), want, err_msg=str(k))


def test_pytorch_bin_with_a_torch_before_2_6_is_a_clear_error(tiny_vision_dirs, tmp_path,
                                                              monkeypatch):
  """torch.load is unsafe before 2.6 even with weights_only (CVE-2025-32434):
  refused before the file is read, naming the file and the fix."""
  torch = pytest.importorskip("torch")
  monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
  checkpoint = str(tmp_path / "bin")
  shutil.copytree(tiny_vision_dirs["dinov2"], checkpoint,
                  ignore=shutil.ignore_patterns("flax_model.msgpack"))
  with open(os.path.join(checkpoint, "pytorch_model.bin"), "wb") as f:
    f.write(b"not read: the version is checked first")
  with pytest.raises(UserError, match=r"pytorch_model\.bin: .*torch >= 2\.6 \(this is 2\.5\.1"):
    load_vision_encoder("dinov2", checkpoint)


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "pytorch_model.bin.index.json"])
def test_pytorch_bin_without_torch_is_a_clear_error(tiny_vision_dirs, tmp_path, monkeypatch,
                                                    filename):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, as when absent
  checkpoint = str(tmp_path / "bin")
  shutil.copytree(tiny_vision_dirs["dinov2"], checkpoint,
                  ignore=shutil.ignore_patterns("flax_model.msgpack"))
  with open(os.path.join(checkpoint, filename), "wb") as f:
    f.write(b"not read: torch is checked first")
  with pytest.raises(UserError, match=r"only PyTorch \.bin weights.*pip install torch"):
    load_vision_encoder("dinov2", checkpoint)


def test_checkpoint_without_weights_is_a_clear_error(tiny_vision_dirs, tmp_path):
  checkpoint = str(tmp_path / "none")
  shutil.copytree(tiny_vision_dirs["dinov2"], checkpoint,
                  ignore=shutil.ignore_patterns("flax_model.msgpack"))
  with pytest.raises(UserError, match="flax_model.msgpack"):
    load_vision_encoder("dinov2", checkpoint)
