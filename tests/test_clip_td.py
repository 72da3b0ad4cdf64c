"""CLIP-TD: the selection against a NumPy ranking of the same attention maps,
the weights against a NumPy softmax, the token loss against NumPy, the
teacher's token features against HF's own outputs, the text alignment, and
the program: its exported model is the baseline's (parameters and FLOPs),
with λ = 0 its gradient is the baseline's exactly, the teacher's cached
outputs are the step's, and bad settings are refused. (The suite's micro demo
runs CLIP-TD on VCR end to end, from the cache: tests/test_demo.py; the VQA
program run below has the teacher in the step.)"""

import dataclasses
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoomshot_jax import encoders, sharding
from zoomshot_jax.configs import vl_finetune as vl_config
from zoomshot_jax.demo import shipped
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import clip_td, vl_tasks
from zoomshot_jax.models import vl_student
from zoomshot_jax.programs import vl_finetune as program
from zoomshot_jax.vl import pipeline
from zoomshot_jax.vl import teacher as teacher_lib
from zoomshot_jax.vl import teacher_cache



@pytest.fixture(scope="module")
def clip():
  return encoders.load_clip(shipped.verify("clip"))


# ------------------------------------------------------------- the terms


def _np_select(scores, valid, rho):
  out = np.zeros_like(valid, bool)
  for i in range(scores.shape[0]):
    idx = [j for j in np.lexsort((np.arange(scores.shape[1]), -scores[i])) if valid[i, j]]
    out[i, idx[:math.ceil(rho * len(idx))]] = True
  return out


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.5, 0.99, 1.0])
def test_selection_is_the_numpy_ranking_of_the_attention(rho):
  rng = np.random.default_rng(0)
  # Rounded scores: many ties, broken by position as in the NumPy ranking.
  scores = np.round(rng.random((16, 37)), 1).astype(np.float32)
  valid = rng.random((16, 37)) > 0.3
  valid[0] = False                      # a row with nothing valid selects nothing
  got = np.asarray(clip_td.select_mask(scores, valid, rho))
  np.testing.assert_array_equal(got, _np_select(scores, valid, rho))


def test_confidence_and_weights_are_the_numpy_softmax():
  rng = np.random.default_rng(1)
  img, cand = rng.normal(size=(6, 8)), rng.normal(size=(6, 5, 8))
  label = np.array([0, 4, 2, -1, 1, 3])
  scale = 7.0
  got = np.asarray(clip_td.confidence(jnp.asarray(img, jnp.float32),
                                      jnp.asarray(cand, jnp.float32), label, scale))
  a = img / np.linalg.norm(img, axis=-1, keepdims=True)
  b = cand / np.linalg.norm(cand, axis=-1, keepdims=True)
  logits = scale * np.einsum("bd,bcd->bc", a, b)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = np.where(label >= 0, p[np.arange(6), np.maximum(label, 0)], 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  w = np.asarray(clip_td.batch_weights(jnp.asarray(want, jnp.float32)))
  np.testing.assert_allclose(w, want / want.mean(), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(clip_td.batch_weights(jnp.zeros(4))), np.ones(4))


@pytest.mark.parametrize("loss", ["cos", "l1"])
def test_token_loss_is_numpy(loss):
  """distill_terms end to end: resampled patches, aligned text tokens, the
  projections, selection and the masked means, against NumPy."""
  rng = np.random.default_rng(2)
  n, length, grid, hidden, dim = 3, 5, 2, 4, 6
  h = rng.normal(size=(n, length + 1 + grid * grid, hidden)).astype(np.float32)
  out = vl_student.VLOutput(last_hidden_state=jnp.asarray(h), pooled=None, attention_mask=None,
                            hidden_states=None, attentions=None, num_text=length)
  params = {k: {"kernel": rng.normal(size=(hidden, dim)).astype(np.float32),
                "bias": rng.normal(size=(dim,)).astype(np.float32)} for k in ("image", "text")}
  img_tok, img_att = rng.normal(size=(n, 4, dim)), rng.random((n, 4))
  txt_tok, txt_att = rng.normal(size=(n, 7, dim)), rng.random((n, 7))
  t_align = rng.integers(-1, length, (n, 7))
  t_valid = (rng.random((n, 7)) > 0.2).astype(np.int32)
  hyper = clip_td.Hyper(mode="clip_td", rho=0.5, loss=loss, image_weight=0.7, text_weight=1.3)
  d, _ = clip_td.distill_terms(hyper, params, out, (img_tok, img_att), (txt_tok, txt_att),
                               t_align, t_valid, grid, grid)

  def dist(s, t):
    s = s / np.linalg.norm(s, axis=-1, keepdims=True)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    return 1 - (s * t).sum(-1) if loss == "cos" else np.abs(s - t).mean(-1)

  def proj(p, x):
    return x @ p["kernel"] + p["bias"]

  want = []
  for i in range(n):
    sel = _np_select(img_att[i:i + 1], np.ones((1, 4), bool), 0.5)[0]
    di = dist(proj(params["image"], h[i, length + 1:]), img_tok[i])[sel].mean()
    valid = (t_valid[i] > 0) & (t_align[i] >= 0)
    sel = _np_select(txt_att[i:i + 1], valid[None], 0.5)[0]
    s = proj(params["text"], h[i, np.maximum(t_align[i], 0)])
    dt = dist(s, txt_tok[i])[sel].mean() if sel.any() else 0.0
    want.append(0.7 * di + 1.3 * dt)
  np.testing.assert_allclose(np.asarray(d), want, rtol=1e-4, atol=1e-5)


def test_lambda_schedules():
  task, distill = jnp.float32(3.0), jnp.float32(0.5)
  h = clip_td.Hyper(lam=2.0, total_steps=10)
  assert float(clip_td.lam_at(h, 4.0, task, distill)) == pytest.approx(12.0)   # loss_ratio
  h = clip_td.Hyper(lam=2.0, schedule="linear", total_steps=10)
  assert float(clip_td.lam_at(h, 4.0, task, distill)) == pytest.approx(1.2)
  assert float(clip_td.lam_at(h, 12.0, task, distill)) == 0.0
  h = clip_td.Hyper(lam=2.0, schedule="ramp", total_steps=10)   # 0 at the start, λ₀ at T
  assert float(clip_td.lam_at(h, 0.0, task, distill)) == 0.0
  assert float(clip_td.lam_at(h, 4.0, task, distill)) == pytest.approx(0.8)
  assert float(clip_td.lam_at(h, 12.0, task, distill)) == 2.0
  h = clip_td.Hyper(lam=2.0, schedule="fixed")
  assert float(clip_td.lam_at(h, 4.0, task, distill)) == 2.0


def test_resampling_keeps_a_constant_grid_and_matches_jax_image():
  x = np.random.default_rng(3).normal(size=(2, 16, 3)).astype(np.float32)
  got = np.asarray(clip_td.resample_grid(jnp.asarray(x), 4, 6))
  want = jax.image.resize(x.reshape(2, 4, 4, 3), (2, 6, 6, 3), "bilinear").reshape(2, 36, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)
  const = np.ones((1, 16, 2), np.float32)
  np.testing.assert_allclose(np.asarray(clip_td.resample_grid(const, 4, 6)), 1.0, atol=1e-6)


# --------------------------------------------------------------- teacher


def _layer_norm(x, p, eps):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def test_teacher_tokens_are_hfs_hidden_states_through_the_projections(clip):
  """Against HF's own per-layer outputs, with the projections applied in NumPy."""
  module, p = clip.module, jax.device_get(clip.params)
  x = np.random.default_rng(4).integers(0, 256, (2, 48, 48, 3)).astype(np.uint8)
  tok, att, pooled = (np.asarray(a) for a in teacher_lib.image_tokens(clip, clip.params, x))
  vis = jax.jit(lambda q, px: module.apply({"params": q}, px, method=lambda m, v: m.vision_model(
      pixel_values=v, output_attentions=True)))(p, clip.preprocess.normalize(x))
  eps = module.config.vision_config.layer_norm_eps
  h = _layer_norm(np.asarray(vis.last_hidden_state)[:, 1:], p["vision_model"]["post_layernorm"],
                  eps)
  np.testing.assert_allclose(tok, h @ np.asarray(p["visual_projection"]["kernel"]), atol=2e-4)
  np.testing.assert_allclose(att, np.asarray(vis.attentions[-1])[:, :, 0, 1:].mean(1), atol=1e-6)
  np.testing.assert_allclose(pooled, np.asarray(clip.image_features(clip.params, x)), atol=1e-5)
  enc = clip.tokenize(["a red star on a dark background", "a ring"], pad_to=16)
  tok, att, pooled = (np.asarray(a) for a in teacher_lib.text_tokens(
      clip, clip.params, enc["input_ids"], enc["attention_mask"]))
  pos = np.broadcast_to(np.arange(16), (2, 16))
  txt = jax.jit(lambda q, i, a: module.apply({"params": q}, i, a, method=lambda m, i, a:
                                             m.text_model(input_ids=i, attention_mask=a,
                                                          position_ids=pos,
                                                          output_attentions=True)))(
      p, enc["input_ids"], enc["attention_mask"])
  eos = enc["attention_mask"].sum(-1) - 1
  np.testing.assert_allclose(
      tok, np.asarray(txt.last_hidden_state) @ np.asarray(p["text_projection"]["kernel"]),
      atol=2e-4)
  np.testing.assert_allclose(
      att, np.asarray(txt.attentions[-1]).mean(1)[np.arange(2), eos], atol=1e-6)
  np.testing.assert_allclose(pooled, np.asarray(clip.text_features(
      clip.params, enc["input_ids"], enc["attention_mask"])), atol=1e-5)


def test_text_alignment_pairs_the_same_words(clip, tmp_path):
  student = pipeline.load_tokenizer(program.world_tokenizer(str(tmp_path)))
  t = teacher_lib.TeacherText(clip.tokenizer, 16)
  first = ["What colour is the star?", "Is there a large red ring on the left?"]
  second = ["The star is red.", "Yes, the ring is large."]
  for pair in (None, second):
    enc = t.encode(student, 24, first, pair)
    s_ids = student(first, pair, padding="max_length", max_length=24,
                    truncation=True)["input_ids"]
    n = 0
    for i in range(2):
      t_words = clip.tokenizer.convert_ids_to_tokens(enc["t_input_ids"][i])
      s_words = student.convert_ids_to_tokens(s_ids[i])
      for j, k in enumerate(enc["t_align"][i]):
        if k >= 0:
          n += 1
          assert t_words[j] in (s_words[k], "<unk>"), (t_words[j], s_words[k])
      # Every real teacher word is aligned; its specials and padding are not.
      real = np.asarray(enc["t_attention_mask"][i]) > 0
      assert (enc["t_align"][i][~real] == -1).all()
    assert n >= 10


# --------------------------------------------------------------- program


def _config(task, mode, **overrides):
  c = vl_config.get_config(f"{task},world,tiny,{mode}")
  c.update_from_flattened_dict({"evals.vl.batch_size": 16} if task == "vcr" else {})
  c.update_from_flattened_dict(overrides)
  return c


def _flops(module, hyper, params, batch):
  keys = ("input_ids", "attention_mask", "token_type_ids", "image")
  fn = jax.jit(lambda p, b: vl_tasks.forward(module, hyper, p, b)[0])
  cost = fn.lower(params, {k: batch[k] for k in keys}).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"]


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("td_vqa"))
  # The teacher in the step here; the micro demo's runs read the cache.
  config = _config("vqa", "clip_td", **{"distill.teacher_cache_gb": 0.0})
  return workdir, config, program.run(config, workdir)


def _inputs(config, workdir):
  """The program's own model and training inputs (teacher side on), and its rows."""
  data = program.load_data(config, workdir)
  vqa = config.task == "vqa"
  answers = program.answer_vocab(config, workdir, data.train_split) if vqa else []
  tok = pipeline.load_tokenizer(data.tokenizer)
  module, params, hyper = program.build_model(config, tok, len(answers))
  teacher, text = teacher_lib.load(config.distill, "world", module.config)
  spec = pipeline.image_spec(module.config.image_size, config.data.image_mean,
                             config.data.image_std)
  inputs = pipeline.Inputs(config.task, tok, config.data.max_length, spec,
                           tuple(answers) if vqa else None, teacher=text)
  cols = pipeline.columns(inputs, data.train, train=True)
  return module, params, hyper, teacher, inputs, cols


def _step_batch(inputs, cols, config, step=0, extra=None):
  """The training batch of a step, as numpy, as the program's loss sees it."""
  batch = pipeline.TrainBatches(inputs, cols, config.train.batch_size, 0,
                                sharding.make_mesh(config.mesh), extra=extra)(step)
  batch = jax.device_get(batch)        # numpy: these checks run outside the sharded step
  batch = {**batch, "teacher_image": batch["image"],
           "image": inputs.spec.normalize(batch["image"])}
  return {k: np.asarray(v) for k, v in batch.items()}


def _pieces(config, workdir):
  """The program's own model, teacher and a training batch (teacher fields on)."""
  module, params, hyper, teacher, inputs, cols = _inputs(config, workdir)
  return module, params, hyper, teacher, _step_batch(inputs, cols, config)


def test_exported_model_is_the_baselines_and_lambda_zero_adds_nothing(vqa_run):
  workdir, config, td = vqa_run
  module, params, hyper, teacher, batch = _pieces(config, workdir)
  shapes = lambda p: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), p)
  # The exported model has the baseline's parameters (no "td" projections)...
  assert shapes(td["params"]) == shapes(jax.device_get(params))
  assert set(td["params"]) == {"encoder", "head"}
  # ...and so the baseline's inference cost.
  assert _flops(module, hyper, td["params"], batch) == _flops(module, hyper, params, batch) > 0
  # λ = 0: the distillation term adds exactly nothing to any gradient, and it
  # is live otherwise (the projections and the encoder get its gradient).
  frozen, state = {"clip": teacher.clip.params}, {"step": jnp.zeros((), jnp.int32)}
  rng = jax.random.PRNGKey(0)
  base = vl_tasks.make_loss_fn(hyper, module)
  g_base = jax.jit(jax.grad(lambda p: base(p, {}, batch, {}, rng)[0]))(params)
  full = clip_td.init(params, module.config.hidden_size, teacher.dim)
  for lam, same in ((0.0, True), (1.0, False)):
    h = clip_td.Hyper(mode="clip_td", schedule="fixed", lam=lam)
    fn = clip_td.make_loss_fn(h, hyper, module, teacher)
    g = jax.jit(jax.grad(lambda p: fn(p, state, batch, frozen, rng)[0]))(full)
    if same:
      jax.tree_util.tree_map(np.testing.assert_array_equal, clip_td.export(g), g_base)
    else:
      assert float(np.abs(g["td"]["image"]["kernel"]).max()) > 0
      word = g["encoder"]["embeddings"]["word_embeddings"]["embedding"]
      assert float(np.abs(word - g_base["encoder"]["embeddings"]["word_embeddings"]
                          ["embedding"]).max()) > 0
  assert 0 <= td["results"]["vqa_val2014"]["overall"] <= 100


@pytest.mark.parametrize("task", ["vcr", "snli_ve"])
def test_cached_teacher_outputs_are_the_steps(tmp_path, task):
  """The cache's rows of a step's batch equal the teacher run on that batch,
  and so does the loss; a budget too small for them leaves the teacher in
  the step. VCR's text is [B, 4, ...], SNLI-VE's (as VQA's) [B, ...]; the
  micro demo's VCR runs read the cache end to end."""
  config = _config(task, "clip_td")
  module, params, hyper, teacher, inputs, cols = _inputs(config, str(tmp_path))
  cache = teacher_cache.build(teacher, inputs, cols, 8, budget_gb=1.0)
  assert {k: len(v) for k, v in cache.items()} == {
      k: len(cols["index"]) for k in (*clip_td.TEACHER_OUTPUTS, "t_align", "t_attention_mask")}
  assert teacher_cache.build(teacher, inputs, cols, 8, budget_gb=1e-6) is None
  step = 3                             # a later step: its rows come from the stream
  live = _step_batch(inputs, cols, config, step)
  cached = _step_batch(dataclasses.replace(inputs, teacher=None), cols, config, step,
                       extra=teacher_cache.lookup(cache))
  assert not set(pipeline.TEACHER_KEYS[:1]) & set(cached)   # no teacher text in the batch
  for k in ("t_align", "t_attention_mask", "image", "input_ids"):
    np.testing.assert_array_equal(cached[k], live[k])
  want = jax.jit(lambda b: clip_td.teacher_outputs(teacher, teacher.clip.params, b,
                                                   task == "vcr"))(live)
  # The cache ran the teacher on other batches than the step's: float32
  # reassociation, which depends on the CPU's vector width (SNLI-VE's differ
  # by up to 1.7e-6 on AVX2; VCR's by 1.5e-6 on AVX-512, under 1e-6 on
  # AVX2); a wrong row is off by ~0.1.
  for k in clip_td.TEACHER_OUTPUTS:
    np.testing.assert_allclose(cached[k], want[k], rtol=1e-5, atol=1e-5)
  full = clip_td.init(params, module.config.hidden_size, teacher.dim)
  fn = clip_td.make_loss_fn(clip_td.Hyper(), hyper, module, teacher)
  frozen, state = {"clip": teacher.clip.params}, {"step": jnp.zeros((), jnp.int32)}
  loss = jax.jit(lambda b: fn(full, state, b, frozen, jax.random.PRNGKey(0))[0])
  np.testing.assert_allclose(float(loss(cached)), float(loss(live)), rtol=1e-5)


def test_modes_are_the_ablations():
  got = {m: (clip_td.Hyper(mode=m).select, clip_td.Hyper(mode=m).weight) for m in clip_td.MODES}
  assert got == {"none": (False, False), "naive": (False, False), "select": (True, False),
                 "weight": (False, True), "clip_td": (True, True)}
  for mode in ("naive", "select", "weight", "clip_td"):
    assert vl_config.get_config(f"snli_ve,{mode}").distill.mode == mode


def test_teacher_without_a_text_tower_and_a_grid_that_cannot_align(tmp_path):
  from zoomshot_jax.encoders import testing  # pylint: disable=g-import-not-at-top
  vision_only = testing.save_tiny_vision("vit", str(tmp_path / "vit"))
  c = _config("snli_ve", "clip_td", **{"distill.teacher": vision_only})
  with pytest.raises(UserError, match="config.distill.teacher"):
    program.run(c, str(tmp_path / "a"))
  c = _config("snli_ve", "clip_td")
  c.student.overrides = {"image_input": "features", "image_feature_dim": 8,
                         "max_image_tokens": 4}
  with pytest.raises(UserError, match="cannot|no grid"):
    teacher_lib.load(c.distill, "world", vl_student.get_config(
        "world_tiny", dict(c.student.overrides)))
  assert not os.path.exists(tmp_path / "a" / "config.json")


@pytest.mark.parametrize("field,value,match", [
    ("distill.rho", 0.0, "config.distill.rho=0.0"), ("distill.rho", 1.5, "config.distill.rho"),
    ("distill.schedule", "cosine", "config.distill.schedule='cosine'"),
    ("distill.mode", "fancy", "config.distill.mode='fancy'"),
    ("distill.loss", "l2", "config.distill.loss='l2'"), ("distill.layer", 9, "config.distill.layer=9"),
    ("distill.teacher_cache_gb", -1.0, "config.distill.teacher_cache_gb=-1.0")])
def test_bad_settings_are_refused_before_anything_runs(tmp_path, field, value, match):
  with pytest.raises(UserError, match=re.escape(match)):
    program.run(_config("snli_ve", "clip_td", **{field: value}), str(tmp_path))
  assert os.listdir(tmp_path) == []
