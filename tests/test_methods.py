"""Loss terms, maps and the closed-form solver against independent NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoomshot_jax import sharding
from zoomshot_jax.methods import linear, losses, ridge


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_norm(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_map(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _np_kd(teacher, student, tau, mode):
  p, q = _np_softmax(teacher / tau), _np_softmax(student / tau)
  if mode == "kl":
    per = np.sum(p * (np.log(p) - np.log(q)), -1)
  else:
    per = -np.log(q[np.arange(len(q)), teacher.argmax(-1)])
  return tau ** 2 * per.mean()


def _random_problem(seed=0, b=6, m=5, d=4, k=3, t=7):
  rng = np.random.default_rng(seed)
  params = {"h": {"kernel": rng.normal(size=(m, d)), "bias": rng.normal(size=d)},
            "g": {"kernel": rng.normal(size=(d, m)), "bias": rng.normal(size=m)}}
  classes = _np_norm(rng.normal(size=(k, d)))
  return (params, rng.normal(size=(b, m)), rng.normal(size=(b, d)),
          rng.normal(size=(t, d)), classes)


@pytest.mark.parametrize("mode", ["kl", "hard_ce"])
def test_zoomshot_terms_match_numpy(mode):
  params, v, c, t, w = _random_problem()
  s, r, tau = 10.0, 3.0, 2.0
  got = losses.zoomshot_terms(jax.tree.map(jnp.float32, params), jnp.float32(v),
                              jnp.float32(c), jnp.float32(t), jnp.float32(w), s, r, tau, mode,
                              paired=True)
  h, g = params["h"], params["g"]
  mse = lambda a, b: np.mean((a - b) ** 2)
  teacher = s * _np_norm(c) @ w.T
  w_v = _np_norm(_np_map(g, r * w))
  want = {
      "mse": mse(_np_map(h, v), c) + mse(_np_map(g, c), v),
      "cycle_image": mse(_np_map(g, _np_map(h, v)), v) + mse(_np_map(h, _np_map(g, c)), c),
      "cycle_text": mse(_np_map(h, _np_map(g, t)), t),
      "pgkd_clip": _np_kd(teacher, s * _np_norm(_np_map(h, v)) @ w.T, tau, mode),
      "pgkd_vision": _np_kd(teacher, s * _np_norm(v) @ w_v.T, tau, mode),
  }
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)


def test_unpaired_terms_need_no_pairs():
  params, v, c, t, w = _random_problem()
  got = losses.zoomshot_terms(params, v, c, t, w, 10.0, 1.0, 1.0, "kl", paired=False)
  assert set(got) == {"cycle_image", "cycle_text"}
  # Shuffling one side leaves every unpaired term unchanged.
  shuffled = losses.zoomshot_terms(params, v, c[::-1], t, w, 10.0, 1.0, 1.0, "kl",
                                   paired=False)
  for k in got:
    np.testing.assert_allclose(got[k], shuffled[k], rtol=1e-6)


def test_distill_is_zero_for_equal_logits_and_positive_otherwise():
  a = jnp.asarray([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
  assert float(losses.distill(a, a, 2.0)) == pytest.approx(0.0, abs=1e-7)
  assert float(losses.distill(a, a[:, ::-1], 2.0)) > 0.1


def test_weighted_total_skips_zero_weights():
  terms = {"a": jnp.float32(2.0), "b": jnp.float32(jnp.nan)}
  assert float(losses.weighted_total(terms, {"a": 3.0, "b": 0.0})) == 6.0


def test_fold_gives_the_map_on_raw_features():
  rng = np.random.default_rng(1)
  p = {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=3)}
  x = rng.normal(size=(4, 5))
  cv, ci = 2.5, 0.3
  # aligned: y' = A (cv x) + b, and y = y' / ci
  want = _np_map(p, cv * x) / ci
  np.testing.assert_allclose(_np_map(linear.fold(p, cv, ci), x), want, rtol=1e-12)
  # The reference's fold (bias * cv / ci) is not this map.
  wrong = {"kernel": p["kernel"] * cv / ci, "bias": p["bias"] * cv / ci}
  assert not np.allclose(_np_map(wrong, x), want)


def test_alignment_scale_gives_variance_4_5():
  x = np.random.default_rng(2).normal(3.0, 7.0, size=(1000, 8))
  c = linear.alignment_scale(x.sum(), (x ** 2).sum(), x.size)
  assert np.var(c * x) == pytest.approx(4.5, rel=1e-9)
  with pytest.raises(ValueError):
    linear.alignment_scale(8.0, 8.0, 8)  # constant features: variance 0


def test_r2_sums_match_numpy_with_mask():
  rng = np.random.default_rng(3)
  y = rng.normal(size=(10, 3))
  pred = y + 0.3 * rng.normal(size=y.shape)
  mask = np.arange(10) < 7
  s = jax.device_get(linear.r2_sums(jnp.asarray(pred), jnp.asarray(y), jnp.asarray(mask)))
  yk, pk = y[:7], pred[:7]
  want = 1 - ((pk - yk) ** 2).sum() / ((yk - yk.mean(0)) ** 2).sum()
  assert linear.r2_from_sums(s) == pytest.approx(want, rel=1e-5)


def _objective(p, x, y, wd):
  """The SGD recipe's objective: MSE over rows and dims + wd/2 ||params||^2."""
  r = x @ p["kernel"] + p["bias"] - y
  return jnp.mean(r ** 2) + wd / 2 * (jnp.sum(p["kernel"] ** 2) + jnp.sum(p["bias"] ** 2))


@pytest.mark.parametrize("wd", [0.0, 5e-2])
def test_closed_form_matches_the_sgd_optimum(wd):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(203, 6)) + 1.0
  y = x @ rng.normal(size=(6, 4)) + 0.5 + 0.2 * rng.normal(size=(203, 4))
  mesh = sharding.make_mesh([("data", -1)])
  closed = ridge.fit_arrays(x.astype(np.float32), y.astype(np.float32), mesh, wd,
                            batch_size=64)
  # The recipe's optimiser (momentum SGD, coupled weight decay), full batch,
  # run to convergence from PyTorch's init.
  tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(0.05, momentum=0.9))
  p = linear.init(jax.random.PRNGKey(0), 6, 4)
  xj, yj = jnp.float32(x), jnp.float32(y)
  loss_grad = jax.grad(lambda p: _objective(p, xj, yj, 0.0))

  @jax.jit
  def run(p):
    def body(_, carry):
      p, s = carry
      u, s = tx.update(loss_grad(p), s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, 20000, body, (p, tx.init(p)))[0]

  sgd = run(p)
  np.testing.assert_allclose(closed["kernel"], sgd["kernel"], atol=2e-4)
  np.testing.assert_allclose(closed["bias"], sgd["bias"], atol=2e-4)
  # And it is the minimiser: every nearby point is worse.
  def f(q):  # the objective in float64 NumPy
    r = _np_map(q, x) - y
    return np.mean(r ** 2) + wd / 2 * (np.sum(np.square(q["kernel"], dtype=np.float64)) +
                                       np.sum(np.square(q["bias"], dtype=np.float64)))

  base = f(closed)
  for i in range(3):
    bumped = {"kernel": closed["kernel"] + 1e-2 * rng.normal(size=(6, 4)),
              "bias": closed["bias"]}
    assert f(bumped) > base


def test_closed_form_sharded_equals_numpy_lstsq():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(50, 3)).astype(np.float32)
  y = rng.normal(size=(50, 2)).astype(np.float32)
  mesh8 = sharding.make_mesh([("data", -1)])
  got = ridge.fit_arrays(x, y, mesh8, 0.0, batch_size=16)   # 4 batches, last padded
  x1 = np.concatenate([x, np.ones((50, 1), np.float32)], 1).astype(np.float64)
  want = np.linalg.lstsq(x1, y.astype(np.float64), rcond=None)[0]
  np.testing.assert_allclose(got["kernel"], want[:-1], atol=1e-5)
  np.testing.assert_allclose(got["bias"], want[-1], atol=1e-5)
