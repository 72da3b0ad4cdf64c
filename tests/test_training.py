"""Training on synthetic features with a known linear relation.

CLIP features c = mu_y + noise for 8 classes; vision features v = c M + o +
small noise, so c is a linear function of v (R² close to 1) and the mapped
encoder should classify as CLIP does, with prompt-derived class vectors.
"""

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from clu import metric_writers

from zoomshot_jax import sharding, training
from zoomshot_jax.evaluation import heldout
from zoomshot_jax.methods import init_params, linear, ridge, text_to_concept, zoomshot

K, D, M = 8, 16, 24


def _world(n, seed):
  rng = np.random.default_rng(seed)
  mu = np.random.default_rng(100).normal(size=(K, D))
  mix = np.random.default_rng(101).normal(size=(D, M))
  y = rng.integers(0, K, n)
  c = mu[y] + 0.35 * rng.normal(size=(n, D))
  v = c @ mix + 3.0 + 0.01 * rng.normal(size=(n, M))
  return v.astype(np.float32), c.astype(np.float32), y


def _prompts():
  mu = np.random.default_rng(100).normal(size=(K, D))
  t = mu[:, None] + 0.1 * np.random.default_rng(7).normal(size=(K, 4, D))
  t = t.reshape(-1, D)
  t /= np.linalg.norm(t, axis=-1, keepdims=True)
  w = t.reshape(K, 4, D).mean(1)
  return t.astype(np.float32), (w / np.linalg.norm(w, axis=-1, keepdims=True)).astype(np.float32)


def _scales(v, c):
  cv = linear.alignment_scale(float(v.sum()), float((v.astype(np.float64) ** 2).sum()), v.size)
  ci = linear.alignment_scale(float(c.sum()), float((c.astype(np.float64) ** 2).sum()), c.size)
  return cv, ci, linear.rms_norm(float((c.astype(np.float64) ** 2).sum()), len(c), ci)


def _optimizer(name, lr, wd=0.0):
  return ml_collections.ConfigDict({"name": name, "learning_rate": lr, "schedule": "cosine",
                                    "warmup_steps": 0, "weight_decay": wd, "momentum": 0.9,
                                    "b1": 0.9, "b2": 0.999, "eps": 1e-8})


def _fit(method, mesh, epochs=40, batch=128, lr=1e-2, init=None, v=None, c=None):
  if v is None:
    v, c, _ = _world(2048, 0)
  cv, ci, class_norm = _scales(v, c)
  text, w = _prompts()
  features = zoomshot.aligned_features(cv, ci)
  if method == "text_to_concept":
    loss_fn = text_to_concept.make_loss_fn(features)
  else:
    loss_fn = zoomshot.make_loss_fn(zoomshot.Hyper(
        weights=(("cycle_image", 1.0), ("cycle_text", 1.0), ("mse", 1.0), ("pgkd_clip", 1.0),
                 ("pgkd_vision", 1.0)), logit_scale=20.0, class_norm=class_norm,
        text_batch=16), features)
  batches = training.ArrayBatches({"vision": v, "clip": c}, batch, seed=0, mesh=mesh)
  total = epochs * batches.steps_per_epoch
  tx = training.make_optimizer(_optimizer("adamw", lr), total)
  params = init or init_params(method, jax.random.PRNGKey(0), M, D)
  state = sharding.replicate(training.init_state(params, tx), mesh)
  frozen = sharding.replicate({"text": text * class_norm, "classes": w}, mesh)
  step = training.make_step(loss_fn, tx, mesh)
  for i in range(total):
    state, metrics = step(state, batches(i), frozen)
    metrics["loss"].block_until_ready()  # as loop.train: a bounded queue
  return jax.device_get(state["params"]), (cv, ci, w)


def _heldout(params, scales, mesh):
  cv, ci, w = scales
  v, c, y = _world(1000, 1)
  metrics = heldout.map_evaluator(v, c, cv, ci, w, 20.0, mesh)(params)
  h = linear.fold(params["h"], cv, ci)
  mapped = v.astype(np.float64) @ h["kernel"] + h["bias"]
  acc = lambda z: np.mean(np.argmax(z / np.linalg.norm(z, axis=-1, keepdims=True) @ w.T, -1) == y)
  return metrics, acc(mapped), acc(c.astype(np.float64))


@pytest.fixture(scope="module")
def mesh8():
  return sharding.make_mesh([("data", -1)])


def test_text_to_concept_closed_form_recovers_the_relation(mesh8):
  v, c, _ = _world(2048, 0)
  cv, ci, _ = _scales(v, c)
  h = ridge.fit_arrays(v * cv, c * ci, mesh8, weight_decay=0.0)
  metrics, acc_mapped, acc_clip = _heldout({"h": h}, (cv, ci, _prompts()[1]), mesh8)
  assert metrics["heldout/r2"] > 0.999
  assert metrics["heldout/agreement"] > 0.99
  assert acc_clip > 0.9 and abs(acc_mapped - acc_clip) < 0.01


@pytest.mark.parametrize("method", ["text_to_concept", "zoomshot"])
def test_sgd_recovers_the_relation(method, mesh8):
  params, scales = _fit(method, mesh8)
  metrics, acc_mapped, acc_clip = _heldout(params, scales, mesh8)
  assert metrics["heldout/r2"] > 0.98, metrics
  assert metrics["heldout/agreement"] > 0.97, metrics
  assert abs(acc_mapped - acc_clip) < 0.03
  if method == "zoomshot":  # g maps CLIP features back to the vision space
    cv, ci, _ = scales
    v, c, _ = _world(500, 2)
    g = linear.fold(params["g"], ci, cv)
    back = c @ g["kernel"] + g["bias"]
    assert 1 - ((back - v) ** 2).sum() / ((v - v.mean(0)) ** 2).sum() > 0.95


def test_eight_devices_equal_one(mesh8):
  mesh1 = sharding.make_mesh([("data", -1)], devices=jax.devices()[:1])
  p8, _ = _fit("zoomshot", mesh8, epochs=2)
  p1, _ = _fit("zoomshot", mesh1, epochs=2)
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # and training moved the parameters (the comparison is not vacuous)
  p0 = init_params("zoomshot", jax.random.PRNGKey(0), M, D)
  assert np.abs(p8["h"]["kernel"] - p0["h"]["kernel"]).max() > 1e-2


def test_batch_order_is_a_function_of_seed_and_epoch(mesh8):
  v, c, _ = _world(100, 0)
  b = training.ArrayBatches({"vision": v, "clip": c}, 10, seed=3, mesh=mesh8)
  again = training.ArrayBatches({"vision": v, "clip": c}, 10, seed=3, mesh=mesh8)
  epoch0 = np.concatenate([b.rows(i)[0] for i in range(10)])
  assert sorted(epoch0) == list(range(100))          # a permutation: each row once
  assert not np.array_equal(b.rows(0)[0], b.rows(10)[0])   # reshuffled next epoch
  np.testing.assert_array_equal(b.rows(17)[0], again.rows(17)[0])
  unpaired = training.ArrayBatches({"vision": v, "clip": c}, 10, seed=3, mesh=mesh8,
                                  groups=[["vision"], ["clip"]])
  rv, rc = unpaired.rows(4)
  assert not np.array_equal(rv, rc)


def test_nan_stops_with_step_and_term_and_keeps_last_good_checkpoint(mesh8, tmp_path):
  v, c, _ = _world(640, 0)
  batches = training.ArrayBatches({"vision": v, "clip": c}, 64, seed=0, mesh=mesh8)
  bad_step = 6   # 1-based step whose batch holds a NaN feature
  v = v.copy()
  v[batches.rows(bad_step - 1)[0][5], 3] = np.nan
  batches.arrays["vision"] = v
  tx = training.make_optimizer(_optimizer("sgd", 0.01), 10)
  state = sharding.replicate(training.init_state(
      init_params("text_to_concept", jax.random.PRNGKey(0), M, D), tx), mesh8)
  step = training.make_step(
      text_to_concept.make_loss_fn(zoomshot.aligned_features(1.0, 1.0)), tx, mesh8)
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), options=ocp.CheckpointManagerOptions(
      save_interval_steps=2, max_to_keep=5))
  with pytest.raises(training.TrainingDiverged, match=r"step 6: loss term 'mse' is nan.*step 4"):
    training.train(step, state, {}, batches, 10, mngr, metric_writers.LoggingWriter(),
               log_every=3, batch_size=64)
  mngr.wait_until_finished()
  assert max(mngr.all_steps()) == 4   # nothing saved at or after the bad step
  restored = mngr.restore(4)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored))
