"""The method-free training core: optimiser factory, step, loop/fit, batch sources.

A tiny MLP with batch normalisation stands in for a method: trainable params,
a non-trained model state, a frozen constant and an rng all pass through the
shared step, so every path a method can take is checked here once.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from zoomshot_jax import sharding, training
from zoomshot_jax.configs import common
from zoomshot_jax.errors import UserError


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    # No bias before batch norm: its gradient is exactly zero in theory, so
    # Adam would turn rounding noise into full-size steps.
    x = nn.Dense(64, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(4)(nn.relu(x))


def _data(n=96, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 16)).astype(np.float32)
  y = (x[:, :4] @ rng.normal(size=(4, 4))).astype(np.float32)
  return {"x": x, "y": y}


def _init():
  variables = _Net().init(jax.random.PRNGKey(0), jnp.zeros((2, 16)), train=False)
  return variables["params"], {"batch_stats": variables["batch_stats"]}


def _loss_fn(params, model_state, batch, frozen, rng):
  pred, updates = _Net().apply({"params": params, **model_state}, batch["x"], train=True,
                               mutable=["batch_stats"])
  # The frozen scale and a step-dependent dropout-like noise: both must reach the loss.
  noise = 1e-3 * jax.random.normal(rng, pred.shape)
  err = jnp.mean(jnp.square(pred * frozen["scale"] + noise - batch["y"]))
  return err, ({"mse": err}, {"batch_stats": updates["batch_stats"]})


def _opt(**kw):
  return common.optimizer(learning_rate=1e-2, **kw)


@pytest.fixture(scope="module")
def mesh8():
  return sharding.make_mesh([("data", -1)])


def _fit(mesh, directory, steps=9, hooks=(), state_rules=None, data=None):
  params, model_state = _init()
  batches = training.ArrayBatches(data or _data(), 32, seed=1, mesh=mesh)
  tx = training.make_optimizer(_opt(), steps)
  return training.fit(_loss_fn, params, {"scale": np.float32(1.5)}, batches, steps, tx, mesh,
                      str(directory), batch_size=32, model_state=model_state, seed=3,
                      checkpoint_every=3, log_every=3, hooks=hooks, state_rules=state_rules)


def _saved_steps(directory) -> list[int]:
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def test_schedules_match_their_formulas():
  cfg = _opt(schedule="cosine", warmup_steps=10)
  lr = training.optim.schedule(cfg, 110)
  assert lr(0) == 0 and abs(float(lr(5)) - 5e-3) < 1e-9 and abs(float(lr(10)) - 1e-2) < 1e-9
  assert abs(float(lr(60)) - 1e-2 * 0.5 * (1 + np.cos(np.pi * 0.5))) < 1e-8
  wc = training.optim.schedule(_opt(schedule="warmup_constant", warmup_steps=4), 100)
  assert [round(float(wc(s)), 6) for s in (0, 2, 4, 50)] == [0, 0.005, 0.01, 0.01]
  assert training.optim.schedule(_opt(schedule="constant"), 100) == 1e-2


def test_weight_decay_only_on_matrices():
  params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3), "scale": jnp.ones(())}
  zero = jax.tree.map(jnp.zeros_like, params)
  for name in ("adamw", "sgd"):
    tx = training.make_optimizer(_opt(name=name, schedule="constant", weight_decay=0.1,
                                      decay_params="matrices"), 10)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0, name   # decayed
    assert float(jnp.abs(updates["bias"]).max()) == 0, name    # not decayed
    assert float(jnp.abs(updates["scale"]).max()) == 0, name
    everything = training.make_optimizer(_opt(name=name, weight_decay=0.1), 10)
    updates, _ = everything.update(zero, everything.init(params), params)
    assert float(jnp.abs(updates["bias"]).max()) > 0, name


@pytest.mark.parametrize("field, value", [("name", "lamb"), ("schedule", "step"),
                                          ("decay_params", "biases")])
def test_bad_optimizer_fields_are_named(field, value):
  with pytest.raises(UserError, match=f"config.optimizer.{field}={value!r}"):
    training.make_optimizer(_opt(**{field: value}), 10)


def test_step_updates_model_state_and_skips_non_finite_steps(mesh8):
  params, model_state = _init()
  tx = training.make_optimizer(_opt(), 10)
  step = training.make_step(_loss_fn, tx, mesh8, seed=0)
  batches = training.ArrayBatches(_data(), 32, seed=1, mesh=mesh8)
  frozen = sharding.replicate({"scale": np.float32(1.0)}, mesh8)
  state = sharding.replicate(training.init_state(params, tx, model_state), mesh8)
  before = jax.device_get(state)
  state, metrics = step(state, batches(0), frozen)
  after = jax.device_get(state)
  assert bool(metrics["finite"]) and int(after["step"]) == 1
  # Batch statistics moved (model state), and the frozen scale got no optimiser state.
  assert not np.allclose(after["model_state"]["batch_stats"]["BatchNorm_0"]["mean"],
                         before["model_state"]["batch_stats"]["BatchNorm_0"]["mean"])
  mu = after["opt_state"][0].mu
  assert jax.tree_util.tree_structure(mu) == jax.tree_util.tree_structure(after["params"])
  bad = dict(_data())
  bad["y"] = bad["y"].copy()
  bad["y"][0, 0] = np.nan
  nan_batches = training.ArrayBatches(bad, 96, seed=1, mesh=mesh8)
  state2, metrics = step(state, nan_batches(0), frozen)
  assert not bool(metrics["finite"])
  for a, b in zip(jax.tree.leaves(jax.device_get(state2)), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)   # nothing of the bad step reached the state


def test_resume_is_bit_identical_with_model_state(mesh8, tmp_path):
  straight = jax.device_get(_fit(mesh8, tmp_path / "a"))

  class Crash(Exception):
    pass

  def crash(done):
    if done == 5:
      raise Crash()

  with pytest.raises(Crash):
    _fit(mesh8, tmp_path / "b", hooks=[crash])
  # Saved every 3 steps and at the end, nothing else (Orbax's default would
  # add step 1 of a fresh run).
  assert _saved_steps(tmp_path / "a") == [3, 6, 9] and _saved_steps(tmp_path / "b") == [3]
  seen = []
  resumed = jax.device_get(_fit(mesh8, tmp_path / "b", hooks=[seen.append]))
  assert seen[0] == 4   # restarted after the step-3 checkpoint
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert int(straight["step"]) == 9


def test_eight_devices_equal_one_and_fsdp_equals_replicated(mesh8, tmp_path):
  one = sharding.make_mesh([("data", -1)], devices=jax.devices()[:1])
  ref = jax.device_get(_fit(one, tmp_path / "one"))
  eight = jax.device_get(_fit(mesh8, tmp_path / "eight"))
  grid = sharding.make_mesh([("data", 2), ("model", 4)])
  rules = sharding.fsdp_rules("model", min_size=256)
  fsdp_state = _fit(grid, tmp_path / "fsdp", state_rules=rules)
  kernel = fsdp_state["params"]["Dense_0"]["kernel"]   # [16, 64]: sharded over "model"
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 16)}
  fsdp = jax.device_get(fsdp_state)
  for a, b, c in zip(jax.tree.leaves(ref), jax.tree.leaves(eight), jax.tree.leaves(fsdp)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
  # Training moved the parameters: the comparison is not vacuous.
  p0, _ = _init()
  assert np.abs(ref["params"]["Dense_1"]["kernel"] - p0["Dense_1"]["kernel"]).max() > 1e-2


@pytest.mark.parametrize("devices", [1, 8])
def test_the_step_is_traced_and_compiled_once(devices, tmp_path):
  """The state fit places and the state the step returns have the same
  shardings, so the jitted step is traced once: on one device the initial
  optimiser state (SingleDeviceSharding) once made it compile twice."""
  traces = []

  def loss_fn(*args):
    traces.append(1)  # runs at trace time only
    return _loss_fn(*args)

  mesh = sharding.make_mesh([("data", -1)], devices=jax.devices()[:devices])
  params, model_state = _init()
  batches = training.ArrayBatches(_data(), 32, seed=1, mesh=mesh)
  tx = training.make_optimizer(_opt(), 4)
  state = training.fit(loss_fn, params, {"scale": np.float32(1.5)}, batches, 4, tx, mesh,
                       str(tmp_path), batch_size=32, model_state=model_state,
                       checkpoint_every=10, log_every=2)
  assert int(state["step"]) == 4 and len(traces) == 1
  # What place gives is the sharding asked for, not an equivalent one.
  rep = sharding.replicated(mesh)
  placed = sharding.place({"a": jnp.zeros(3), "b": np.ones(2)}, rep)
  assert all(x.sharding == rep for x in jax.tree.leaves(placed))


def test_divergence_names_the_step_and_term(mesh8, tmp_path):
  data = _data(n=320)   # 10 steps per epoch: the bad row is in step 5 alone
  batches = training.ArrayBatches(data, 32, seed=1, mesh=mesh8)
  data["y"] = data["y"].copy()
  data["y"][batches.rows(4)[0][0], 0] = np.inf   # in the 5th step's batch
  with pytest.raises(training.TrainingDiverged, match=r"step 5: loss term 'mse'.*step 3"):
    _fit(mesh8, tmp_path, data=data)


def test_array_batches_groups_and_host_transform(mesh8):
  data = {"a": np.arange(40), "b": np.arange(40) * 10}
  same = training.ArrayBatches(data, 8, seed=2, mesh=mesh8)
  split = training.ArrayBatches(data, 8, seed=2, mesh=mesh8, groups=[["a"], ["b"]])
  batch = jax.device_get(same(3))
  np.testing.assert_array_equal(batch["b"], batch["a"] * 10)   # rows stay paired
  rows = split.rows(3)
  assert not np.array_equal(rows[0], rows[1])
  np.testing.assert_array_equal(rows[0], same.rows(3)[0])      # group 0 keeps the order
  doubled = training.ArrayBatches(data, 8, seed=2, mesh=mesh8,
                                  make_batch=lambda r, rng: {"a": r["a"] * 2})
  np.testing.assert_array_equal(jax.device_get(doubled(3))["a"], batch["a"] * 2)
  with pytest.raises(UserError, match="config.clip.batch_size=64 is larger than the 40"):
    training.ArrayBatches(data, 64, seed=0, mesh=mesh8, field="clip.batch_size")


def test_optimizer_group_is_complete_and_checked():
  cfg = common.optimizer(name="sgd", momentum=0.0)
  assert isinstance(cfg, ml_collections.ConfigDict) and cfg.name == "sgd"
  training.make_optimizer(cfg, 10)   # every field the factory reads is there
  with pytest.raises(KeyError, match="lr"):
    common.optimizer(lr=1.0)
  assert isinstance(training.make_optimizer(common.optimizer(), 5), optax.GradientTransformation)


def test_saving_a_replicated_state_on_one_host_compiles_nothing(mesh8, tmp_path):
  """Orbax's replica-parallel save would compile one slice program per array
  shape to split the writing between replicas that one process writes anyway
  (training/checkpoints.py); the restored state is the saved one."""
  from zoomshot_jax import compile_cache  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  rep = sharding.replicated(mesh8)
  state = sharding.place({"params": {"a": np.arange(64, dtype=np.float32).reshape(8, 8),
                                     "b": np.ones(24, np.float32), "c": np.ones((8, 3, 5))},
                          "step": np.int32(3)}, rep)
  mngr = checkpoints.manager(str(tmp_path), every=1, keep=1, config={})
  before = compile_cache.snapshot()
  mngr.save(3, args=checkpoints.ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  assert compile_cache.snapshot()["compiles"] == before["compiles"]
  zeros = jax.tree.map(lambda x: jnp.zeros_like(x, device=rep), state)
  restored, step = checkpoints.restore_latest(mngr, zeros)
  assert step == 3
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  mngr.close()
