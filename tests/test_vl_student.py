"""The VL student (models/vl_student.py) and its task heads (methods/vl_tasks.py).

Tiny random BERT and ViT checkpoints are written with save_pretrained (no
network). Loading is checked against the checkpoints' own HF models: with its
image masked out the student must be BERT exactly, and its image tokens ViT's
embeddings exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from jax.sharding import PartitionSpec as P
from transformers.models.vit import modeling_flax_vit as hf_vit

from zoomshot_jax import sharding
from zoomshot_jax.encoders import params as params_lib
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import vl_tasks
from zoomshot_jax.models import vl_student, vl_weights
from zoomshot_jax.vl.readers import VCRExample

VOCAB, HIDDEN, LAYERS, HEADS = 50, 32, 2, 4


def _distinct(params, seed):
  """Every leaf perturbed: random_params makes all LayerNorms equal, and a
  mapping that swapped two of them would then go unseen."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (np.asarray(x) + rng.normal(0, 0.05, np.shape(x)))
                      .astype(np.float32), params)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("bert"))
  config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   intermediate_size=64, max_position_embeddings=24)
  model = transformers.FlaxBertModel(config, _do_init=False)
  model.save_pretrained(path, params=_distinct(params_lib.random_params(model, 3), 4))
  return path


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("vit"))
  config = transformers.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=1,
                                  num_attention_heads=HEADS, intermediate_size=64,
                                  image_size=32, patch_size=8)
  model = transformers.FlaxViTModel(config, _do_init=False)
  model.save_pretrained(path, params=_distinct(params_lib.random_params(model, 5), 6))
  return path


@pytest.fixture(scope="module")
def cfg(bert_dir):
  """world_tiny's image side (32 px, patch 8: 16 patches) with the BERT's sizes."""
  return vl_student.from_bert_config(bert_dir, vl_student.get_config("world_tiny"))


def _text(rng, b=2, length=7):
  ids = rng.integers(1, VOCAB, (b, length)).astype(np.int32)
  mask = np.ones((b, length), np.int32)
  mask[1, length - 2:] = 0
  types = np.zeros((b, length), np.int32)
  types[:, length // 2:] = 1
  return ids, mask, types


def test_config_errors(cfg, bert_dir):
  with pytest.raises(UserError, match="preset"):
    vl_student.get_config("vilt_b16")
  with pytest.raises(UserError, match="hiden_size"):
    vl_student.get_config("world_tiny", {"hiden_size": 8})
  with pytest.raises(UserError, match="multiple of patch_size"):
    vl_student.get_config("world_tiny", {"image_size": 36})
  with pytest.raises(UserError, match="from_bert_config"):   # hidden 64 vs the BERT's 32
    vl_weights.load_bert_weights(vl_student.init_params(vl_student.get_config("world_tiny")),
                                 bert_dir)
  module = vl_student.VLStudent(cfg)
  params = vl_student.param_shapes(cfg)
  with pytest.raises(UserError, match="image_size"):
    jax.eval_shape(lambda p: vl_student.encode(module, p, jnp.zeros((1, 3), jnp.int32),
                                               image=jnp.zeros((1, 16, 16, 3))), params)


def test_bert_weights_load_by_name(cfg, bert_dir):
  params = vl_student.init_params(cfg, 0)
  loaded, report = vl_weights.load_bert_weights(params, bert_dir)
  model, bert = params_lib.load_model(transformers.FlaxBertModel, bert_dir, ("bert",),
                                      jnp.float32, "bert")
  assert len(report.copied) == len(jax.tree.leaves(bert)) and not report.unused
  assert {n.split("/")[0] for n in report.kept} == {"image_embeddings", "modality_embeddings"}

  rng = np.random.default_rng(0)
  ids, mask, types = _text(rng)
  image = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  ref = jax.jit(lambda p: model.module.apply({"params": p}, ids, mask, types,
                                             output_hidden_states=True))(bert)
  module = vl_student.VLStudent(cfg)
  run = jax.jit(lambda p, im, im_mask: vl_student.encode(
      module, p, ids, mask, types, im, im_mask, output_hidden_states=True))

  def assert_is_bert(out):
    n = ids.shape[1]
    np.testing.assert_allclose(out.last_hidden_state[:, :n], ref.last_hidden_state, atol=2e-5)
    np.testing.assert_allclose(out.pooled, ref.pooler_output, atol=2e-5)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
      np.testing.assert_allclose(ours[:, :n], theirs, atol=2e-5)

  assert_is_bert(run(loaded, image, np.zeros((2, 16), np.int32)))   # image masked out
  assert_is_bert(run(loaded, None, None))                           # no image
  # Controls: each would make a wrong mapping (or a test that compares
  # nothing) visible. A visible image changes the text; so do random weights,
  # and a text modality embedding.
  far = lambda out: np.abs(out.pooled - ref.pooler_output).max() > 1e-3
  assert far(run(loaded, image, None))
  assert far(run(params, None, None))
  shifted = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 * (jax.tree_util.keystr(p).startswith("['modality_embeddings']")),
      loaded)
  assert far(run(shifted, None, None))


def test_vit_patch_embedding(cfg, vit_dir):
  loaded, report = vl_weights.load_vit_patch_embedding(vl_student.init_params(cfg), vit_dir)
  assert not report.notes and len(report.copied) == 4
  vit_model, vit = params_lib.load_model(transformers.FlaxViTModel, vit_dir, ("vit",),
                                         jnp.float32, "vit", add_pooling_layer=False)
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  ref = hf_vit.FlaxViTEmbeddings(vit_model.config).apply({"params": vit["embeddings"]}, x)
  ours = vl_student.ImageEmbeddings(cfg).apply({"params": loaded["image_embeddings"]}, x,
                                               method=vl_student.ImageEmbeddings.tokens)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  patches = hf_vit.FlaxViTPatchEmbeddings(vit_model.config).apply(
      {"params": vit["embeddings"]["patch_embeddings"]}, x)
  pos = np.asarray(vit["embeddings"]["position_embeddings"])
  np.testing.assert_allclose(np.asarray(ours)[:, 1:] - pos[:, 1:], patches, atol=1e-5)

  # A 6x6 grid from the ViT's 4x4: bilinear with half-pixel centres, edges clamped.
  big = dataclasses.replace(cfg, image_size=48)
  loaded, report = vl_weights.load_vit_patch_embedding(vl_student.init_params(big), vit_dir)
  assert "interpolated bilinearly" in report.notes[0]
  got = np.asarray(loaded["image_embeddings"]["position_embeddings"])[0]
  grid = pos[0, 1:].reshape(4, 4, HIDDEN)
  src = np.clip((np.arange(6) + 0.5) * 4 / 6 - 0.5, 0, 3)
  lo = np.floor(src).astype(int)
  hi, w = np.minimum(lo + 1, 3), (src - lo)[:, None, None]
  rows = grid[lo] * (1 - w) + grid[hi] * w
  want = rows[:, lo] * (1 - w[None, :, :, 0]) + rows[:, hi] * w[None, :, :, 0]
  np.testing.assert_allclose(got[0], pos[0, 0], atol=1e-6)
  np.testing.assert_allclose(got[1:], want.reshape(36, HIDDEN), atol=1e-5)


def test_hidden_states_and_attentions(cfg):
  module, params = vl_student.build(cfg, seed=1)
  rng = np.random.default_rng(2)
  ids, mask, types = _text(rng, length=6)
  image = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  image_mask = np.ones((2, 16), np.int32)
  image_mask[0] = 0          # row 0: no image at all (its image token goes too)
  image_mask[1, 10:] = 0
  out = jax.jit(lambda p: vl_student.encode(module, p, ids, mask, types, image, image_mask,
                                            output_hidden_states=True,
                                            output_attentions=True))(params)
  t = 6 + 1 + 16
  assert out.num_text == 6
  assert np.stack(out.hidden_states).shape == (LAYERS + 1, 2, t, HIDDEN)
  att = np.stack(out.attentions)
  assert att.shape == (LAYERS, 2, HEADS, t, t)
  np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
  want_mask = np.concatenate([mask, image_mask.max(1, keepdims=True), image_mask], 1)
  np.testing.assert_array_equal(out.attention_mask, want_mask)
  assert want_mask[0, 6:].sum() == 0 and want_mask[1, 6] == 1
  masked = np.broadcast_to((want_mask == 0)[None, :, None, None, :], att.shape)
  assert att[masked].max() < 1e-6 and att[~masked].min() > 0
  np.testing.assert_allclose(out.hidden_states[-1], out.last_hidden_state, atol=0)


def test_dropout_bf16_and_jit(cfg):
  module, params = vl_student.build(cfg, seed=1)
  ids, mask, types = _text(np.random.default_rng(3))
  image = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
  run = jax.jit(lambda p, key: vl_student.encode(module, p, ids, mask, types, image,
                                                 train=True, rng=key).pooled)
  a, b = run(params, jax.random.PRNGKey(0)), run(params, jax.random.PRNGKey(0))
  c = run(params, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-4
  f32 = jax.jit(lambda p: vl_student.encode(module, p, ids, mask, types, image))(params)
  bf16_module = vl_student.VLStudent(dataclasses.replace(cfg, dtype="bfloat16"))
  bf16 = jax.jit(lambda p: vl_student.encode(bf16_module, p, ids, mask, types, image))(params)
  assert bf16.last_hidden_state.dtype == jnp.bfloat16
  diff = np.abs(np.asarray(bf16.last_hidden_state, np.float32) - f32.last_hidden_state)
  assert diff.mean() < 0.05


def test_vqa_loss_and_score_match_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(0, 2, (5, 7)).astype(np.float32)
  targets = rng.choice([0.0, 0.3, 0.6, 0.9, 1.0], (5, 7)).astype(np.float32)
  x, t = logits.astype(np.float64), targets.astype(np.float64)
  sig = 1 / (1 + np.exp(-x))
  want = -(t * np.log(sig) + (1 - t) * np.log(1 - sig)).sum(1).mean()
  np.testing.assert_allclose(vl_tasks.vqa_loss(logits, targets), want, rtol=1e-5)
  np.testing.assert_allclose(vl_tasks.vqa_score(logits, targets),
                             t[np.arange(5), x.argmax(1)].mean(), rtol=1e-6)


def test_choice_losses_and_accuracies_match_numpy():
  rng = np.random.default_rng(6)
  logits = rng.normal(0, 2, (6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  x = logits.astype(np.float64)
  lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
  np.testing.assert_allclose(vl_tasks.cross_entropy(logits, labels),
                             (lse - x[np.arange(6), labels]).mean(), rtol=1e-5)
  answers = np.eye(4)[[0, 1, 2, 3]]           # predicts 0, 1, 2, 3
  rationales = np.eye(4)[[3, 3, 0, 0]]        # predicts 3, 3, 0, 0
  acc = vl_tasks.vcr_accuracies(answers, np.array([0, 1, 0, 0]),
                                rationales, np.array([3, 0, 0, 1]))
  # answers right: T T F F; rationales right: T F T F; both: T F F F
  assert {k: float(v) for k, v in acc.items()} == {"q2a": 0.5, "qa2r": 0.5, "q2ar": 0.25}


def test_vcr_scores_each_candidate_as_its_own_sequence(cfg):
  hyper = vl_tasks.Hyper(task="vcr")
  module = vl_student.VLStudent(cfg)
  params = vl_tasks.init(vl_student.init_params(cfg, 2), cfg, hyper, seed=3)
  rng = np.random.default_rng(7)
  ids = rng.integers(1, VOCAB, (2, 4, 6)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[:, :, 4:] = rng.integers(0, 2, (2, 4, 2))
  image = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  batch = {"input_ids": ids, "attention_mask": mask, "image": image,
           "label": np.array([1, 3])}
  logits, _ = jax.jit(lambda p: vl_tasks.forward(module, hyper, p, batch))(params)
  assert logits.shape == (2, 4)
  pooled = jax.jit(lambda p: vl_student.encode(
      module, p, ids.reshape(8, 6), mask.reshape(8, 6),
      image=np.stack([image[i // 4] for i in range(8)])).pooled)(params["encoder"])
  each = vl_tasks.ChoiceHead().apply({"params": params["head"]}, pooled)
  np.testing.assert_allclose(logits, np.asarray(each).reshape(2, 4), atol=1e-5)

  example = VCRExample("a1", "m", "i.jpg", "i.json", ("person",), "Why ?",
                       ("a0", "a1", "a2", "a3"), ("r0", "r1", "r2", "r3"), 2, 0)
  assert vl_tasks.vcr_example_pairs(example, "q2a")[1] == ("Why ?", "a1")
  assert vl_tasks.vcr_example_pairs(example, "qa2r")[3] == ("Why ? a2", "r3")


def test_vqa_loss_fn_under_jit(cfg):
  cfg = dataclasses.replace(cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  hyper = vl_tasks.Hyper(task="vqa", num_answers=9)
  module = vl_student.VLStudent(cfg)
  params = vl_tasks.init(vl_student.init_params(cfg, 4), cfg, hyper)
  rng = np.random.default_rng(8)
  ids, mask, types = _text(rng)
  batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
           "image": rng.normal(size=(2, 32, 32, 3)).astype(np.float32),
           "targets": rng.choice([0.0, 0.3, 1.0], (2, 9)).astype(np.float32)}
  loss_fn = vl_tasks.make_loss_fn(hyper, module)
  (loss, (metrics, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, {}, batch, {}, jax.random.PRNGKey(0))
  logits, _ = jax.jit(lambda p: vl_tasks.forward(module, hyper, p, batch))(params)
  np.testing.assert_allclose(loss, vl_tasks.vqa_loss(logits, batch["targets"]), rtol=1e-5)
  assert set(metrics) == {"vqa_score"}
  for part in ("encoder", "head"):
    g = jax.tree.leaves(grads[part])
    assert all(np.isfinite(x).all() for x in g) and max(np.abs(x).max() for x in g) > 0


def test_param_sharding_on_8_devices(cfg):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh([("data", 2), ("model", 4)])
  shapes = vl_student.param_shapes(vl_student.get_config("vilt_b32"))
  specs = sharding.param_shardings(shapes, mesh, vl_student.param_rules())
  for s, x in zip(jax.tree.leaves(specs), jax.tree.leaves(shapes), strict=True):
    s.shard_shape(x.shape)   # raises if the sharding does not fit the shape
  layer = specs["encoder"]["layer"]["0"]
  assert "model" in layer["attention"]["self"]["query"]["kernel"].spec
  assert "model" in layer["intermediate"]["dense"]["kernel"].spec
  assert "model" in specs["embeddings"]["word_embeddings"]["embedding"].spec
  assert layer["output"]["LayerNorm"]["scale"].spec == P()

  # Sharded == unsharded, on the tiny student with every divisible weight split.
  module, params = vl_student.build(cfg, seed=5)
  tiny = sharding.param_shardings(params, mesh, vl_student.param_rules(min_size=0))
  assert "model" in tiny["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"].spec
  rng = np.random.default_rng(9)
  ids = rng.integers(1, VOCAB, (8, 5)).astype(np.int32)
  image = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
  fn = lambda p, i, im: vl_student.encode(module, p, i, image=im).last_hidden_state
  want = jax.jit(fn)(params, ids, image)
  rows = sharding.batch_sharding(mesh)
  got = jax.jit(fn, in_shardings=(tiny, rows, rows))(sharding.place(params, tiny),
                                                     sharding.place(ids, rows),
                                                     sharding.place(image, rows))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
