"""Sharding helpers against numpy, parameter rules, and FSDP == replicated training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from zoomshot_jax import sharding
from zoomshot_jax.errors import UserError


def _mesh_2x4():
  return sharding.make_mesh([("data", 2), ("model", 4)])


@pytest.mark.parametrize("axes", [[("data", -1)], [("data", 2), ("model", 4)]])
@pytest.mark.parametrize("n", [1, 13, 16])
def test_pad_run_gather_restores_rows(axes, n):
  mesh = sharding.make_mesh(axes)
  rng = np.random.default_rng(n)
  batch = {"x": rng.normal(size=(n, 3)).astype(np.float32), "y": np.arange(n, dtype=np.int32)}
  padded, mask = sharding.pad_to_mesh(batch, mesh)
  assert len(mask) == -(-n // 8) * 8 and mask.sum() == n and mask[:n].all()
  np.testing.assert_array_equal(padded["x"][n:], np.repeat(batch["x"][-1:], len(mask) - n, 0))
  rows = sharding.batch_sharding(mesh)
  g = sharding.to_global(padded, rows)
  out = jax.jit(lambda b: {"x": 2 * b["x"], "y": b["y"] + 1}, out_shardings=rows)(g)
  got = sharding.gather_rows(jax.tree.map(sharding.local_rows, out), mask)
  np.testing.assert_array_equal(got["x"], 2 * batch["x"])
  np.testing.assert_array_equal(got["y"], batch["y"] + 1)


def test_pad_and_gather_over_simulated_hosts(monkeypatch):
  """Three hosts with 5, 3 and 0 rows: each pads to the agreed 8; the gather
  stacks the hosts' padded rows and keeps the 8 real ones, in host order."""
  mesh = sharding.make_mesh([("data", -1)])
  counts = [5, 3, 0]
  data = [np.arange(10 * i, 10 * i + c, dtype=np.float32)[:, None] * [1, -1] for i, c in
          enumerate(counts)]
  monkeypatch.setattr(sharding, "host_max", lambda v: max(counts))
  hosts = [sharding.pad_to_mesh({"a": d, "b": d[:, 0]}, mesh) for d in data]
  assert all(len(m) == 8 for _, m in hosts)
  np.testing.assert_array_equal(hosts[2][0]["a"], np.zeros((8, 2)))  # no row: zeros
  monkeypatch.setattr(sharding, "gather_to_all_hosts",
                      lambda tree: jax.tree.map(lambda *xs: np.stack(xs), *hosts))
  got = sharding.gather_rows(*hosts[0])
  want = np.concatenate(data)
  np.testing.assert_array_equal(got["a"], want)
  np.testing.assert_array_equal(got["b"], want[:, 0])


def test_replicate_keeps_replicated_arrays_and_places_the_rest():
  mesh = _mesh_2x4()
  x = sharding.replicate(np.arange(6.0), mesh)
  assert x.sharding.is_equivalent_to(sharding.replicated(mesh), 1)
  tree = sharding.replicate({"x": x, "y": np.ones((2, 4))}, mesh)
  assert tree["x"] is x
  assert tree["y"].sharding.is_equivalent_to(sharding.replicated(mesh), 2)
  np.testing.assert_array_equal(sharding.fetch_global(tree["y"]), np.ones((2, 4)))
  split = sharding.place(x, jax.sharding.NamedSharding(mesh, P("data")))
  assert split.addressable_shards[0].data.shape == (3,)
  np.testing.assert_array_equal(sharding.fetch_global(split), np.arange(6.0))


def _specs(tree):
  return jax.tree.map(lambda s: s.spec, tree,
                      is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def test_param_rules_first_match_default_replicated_indivisible_dropped():
  mesh = _mesh_2x4()
  params = {"enc": {"Dense_0": {"kernel": np.zeros((8, 16)), "bias": np.zeros(16)},
                    "Dense_1": {"kernel": np.zeros((6, 5))}},
            "head": {"kernel": np.zeros((16, 4))}, "emb": np.zeros((8, 3))}
  rules = [(r"head/kernel", P(None, "model")), (r"kernel$", P("model", None)),
           (r"^emb$", P(("data", "model")))]
  specs = _specs(sharding.param_shardings(params, mesh, rules))
  assert specs["head"]["kernel"] == P(None, "model")          # first match wins
  assert specs["enc"]["Dense_0"]["kernel"] == P("model", None)
  assert specs["enc"]["Dense_0"]["bias"] == P()               # no match: replicated
  assert specs["enc"]["Dense_1"]["kernel"] == P(None, None)   # 6 % 4: stays replicated
  assert specs["emb"] == P(("data", "model"))                 # 8 over both axes
  with pytest.raises(UserError, match="2 dimensions"):
    sharding.param_shardings({"b": np.zeros(4)}, mesh, [("b", P(None, "model"))])
  with pytest.raises(UserError, match="mesh axes"):
    sharding.param_shardings({"b": np.zeros(4)}, mesh, [("b", P("expert"))])


def test_fsdp_rules_and_names():
  mesh = _mesh_2x4()
  params = {"w": np.zeros((8, 12)), "cube": np.zeros((12, 12, 3)), "odd": np.zeros((6, 10)),
            "small": np.zeros((2, 4)), "bias": np.zeros(400)}
  specs = _specs(sharding.param_shardings(params, mesh, sharding.fsdp_rules(min_size=64)))
  assert specs == {"w": P(None, "model"), "cube": P("model", None, None), "odd": P(),
                   "small": P(), "bias": P()}
  with pytest.raises(UserError, match="'model'"):
    sharding.param_shardings(params, sharding.make_mesh([("data", -1)]), sharding.FSDP)
  assert sharding.rules_from_config("fsdp") is sharding.FSDP
  assert not sharding.rules_from_config("replicated")
  with pytest.raises(UserError, match=r"\['fsdp', 'replicated'\]"):
    sharding.rules_from_config("zero3")


def test_state_shardings_give_moments_their_params_sharding():
  mesh = _mesh_2x4()
  params = {"Dense_0": {"kernel": np.zeros((8, 16)), "bias": np.zeros(16)}}
  state = {"params": params, "opt_state": optax.adamw(1e-3).init(params), "step": 0}
  rules = [(r"^Dense_0/kernel$", P(None, "model"))]  # anchored: matched on a suffix
  specs = _specs(sharding.state_shardings(state, mesh, rules))
  adam = specs["opt_state"][0]
  assert specs["params"]["Dense_0"]["kernel"] == P(None, "model")
  assert adam.mu["Dense_0"]["kernel"] == adam.nu["Dense_0"]["kernel"] == P(None, "model")
  assert adam.mu["Dense_0"]["bias"] == P()
  assert adam.count == P() and specs["step"] == P()


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(256)(x))
    x = jnp.tanh(nn.Dense(256)(x))
    return nn.Dense(8)(x)


def _train(mesh, rules, params, batches):
  """3 AdamW steps under `rules`; returns the final (on-device) state and losses."""
  # eps well above float32 summation noise: with adam's 1e-8, a gradient that
  # cancels to ~1e-9 (its sum's order differs between shardings) takes a full
  # step of either sign, and the runs would differ by rounding, not sharding.
  model, tx = _MLP(), optax.adamw(1e-2, eps=1e-3, weight_decay=0.1)

  def step(state, batch):
    def loss_fn(p):
      return jnp.mean((model.apply({"params": p}, batch["x"]) - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
            "step": state["step"] + 1}, loss

  state = {"params": params, "opt_state": tx.init(params), "step": np.int32(0)}
  state_sh = sharding.state_shardings(state, mesh, rules)
  rows = sharding.batch_sharding(mesh)
  step = jax.jit(step, in_shardings=(state_sh, rows),
                 out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  state = sharding.place(state, state_sh)
  losses = []
  for batch in batches:
    state, loss = step(state, sharding.to_global(batch, rows))
    losses.append(float(loss))
  return state, losses


def test_fsdp_training_equals_replicated():
  mesh = _mesh_2x4()
  rng = np.random.default_rng(0)
  batches = [{"x": rng.normal(size=(32, 64)).astype(np.float32),
              "y": rng.normal(size=(32, 8)).astype(np.float32)} for _ in range(3)]
  params = jax.device_get(_MLP().init(jax.random.PRNGKey(0), batches[0]["x"])["params"])
  rep, rep_losses = _train(mesh, sharding.REPLICATED, params, batches)
  fsdp, fsdp_losses = _train(mesh, sharding.fsdp_rules(min_size=4096), params, batches)

  kernel = fsdp["params"]["Dense_1"]["kernel"]                 # [256, 256]
  assert kernel.sharding.spec == P("model", None)
  assert {s.data.shape for s in kernel.addressable_shards} == {(64, 256)}  # 1/4 each
  assert len({s.index[0].start for s in kernel.addressable_shards}) == 4
  assert fsdp["opt_state"][0].mu["Dense_1"]["kernel"].sharding.spec == P("model", None)
  assert fsdp["params"]["Dense_0"]["kernel"].sharding.spec == P(None, "model")  # [64, 256]
  assert fsdp["params"]["Dense_2"]["kernel"].sharding.spec == P()  # 2048 < min_size
  assert rep["params"]["Dense_1"]["kernel"].sharding.spec == P()

  assert int(fsdp["step"]) == 3
  np.testing.assert_allclose(fsdp_losses, rep_losses, rtol=1e-6)
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), rep["params"], params)
  assert min(jax.tree.leaves(moved)) > 1e-3  # the steps did train
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=0, atol=1e-6),
               fsdp["params"], rep["params"])
