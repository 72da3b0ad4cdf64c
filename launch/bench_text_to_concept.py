r"""Text-to-Concept fit and Zoom-shot training speed, on synthetic cached features.

Three parts, each optional (--parts), all in one process:

t2c       On the same synthetic features (default 100k x 768 -> 512, plus 10k
          held-out rows), variance-aligned as the program does (METHODS.md
          §1): the reference recipe in PyTorch (nn.Linear, SGD with momentum
          and coupled weight decay, MSELoss, shuffled batches), our closed form
          (`ridge.fit_arrays`) and our SGD (`training.loop`'s jitted step with
          the same recipe). Wall time, train and held-out R², ratio vs PyTorch.
zoomshot  Samples/s of the Zoom-shot step (all five loss terms, AdamW, the
          prompt set of --classes x --templates random unit vectors) on the
          same cached features, after warm-up.
epoch     On a generated image folder: the extract epoch (`features.extract`
          with a random-init CLIP ViT-B/32 and a random-init DINOv2), then
          Zoom-shot epochs on the resulting cache. Prints the cost of an epoch
          from the cache (epoch 2+) relative to the extract epoch.

The recipes come from the configs the binary runs (--t2c_config,
--zs_config; any field overridable, e.g. --t2c_config.train.epochs=1), so the
benchmark times what ships. Nothing is asserted: the figures are for reading.

  python launch/bench_text_to_concept.py                          # everything
  python launch/bench_text_to_concept.py --parts=t2c --n=20000    # quick look
  python launch/bench_text_to_concept.py --parts=epoch --epoch_images=512
  python launch/bench_text_to_concept.py --parts=t2c,zoomshot --zs_batches=256,4096  # GPU

Without TensorFlow, TFDS or clu (an accelerator image may lack them), parts
t2c and zoomshot still run: `bench_util.stub_missing` stands in for them.

Time measured here: from the first step after the data are in memory to the
last result blocked on, so jit compilation is *included* in "wall"; "steady"
leaves it out (see each part). Data generation is never timed.
"""

from __future__ import annotations

import math
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from bench_util import (available_cores, check_args, stub_missing,  # launch/, beside this script
                        usage_error, write_json)
from ml_collections import config_flags

# `python launch/<script>.py` puts launch/ on the path, not the repo root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
STUBBED = stub_missing()  # only what is not installed; part epoch needs them all
from zoomshot_jax import io_utils, methods, sharding, training
from zoomshot_jax.methods import linear, ridge, text_to_concept, zoomshot
from zoomshot_jax.training import features
from bench_t2c_parts import run_epoch, torch_reference  # launch/, beside this script
# pylint: enable=g-import-not-at-top,wrong-import-position

_PARTS = ("t2c", "zoomshot", "epoch")
flags.DEFINE_list("parts", list(_PARTS), f"Which parts to run, of {','.join(_PARTS)}.")
flags.DEFINE_integer("n", 100_000, "Training rows of the synthetic features.")
flags.DEFINE_integer("heldout", 10_000, "Held-out rows (same distribution).")
flags.DEFINE_integer("vision_dim", 768, "m: vision feature dim.")
flags.DEFINE_integer("clip_dim", 512, "d: CLIP feature dim.")
flags.DEFINE_integer("rank", 128, "Rank of the vision features' latent factor.")
flags.DEFINE_float("target_r2", 0.85,
                   "Population R² of the best linear map; the noise on the CLIP side is "
                   "scaled to give it.")
flags.DEFINE_integer("rng_seed", 0, "Seed of the features, images, inits and batch orders.")
config_flags.DEFINE_config_file(
    "t2c_config", os.path.join(_ROOT, "configs", "text_to_concept.py"),
    "Text-to-Concept recipe: train.*, optimizer.*, zoomshot.ridge_weight_decay.")
config_flags.DEFINE_config_file(
    "zs_config", os.path.join(_ROOT, "configs", "zoomshot.py"),
    "Zoom-shot recipe: train.*, optimizer.*, zoomshot.loss.*, zoomshot.pgkd_*.")
flags.DEFINE_enum("torch_loader", "index", ["index", "dataloader"],
                  "How the PyTorch reference batches: 'index' slices the tensors with a "
                  "torch.randperm per epoch (fast); 'dataloader' is the reference code's "
                  "DataLoader(TensorDataset, shuffle=True, num_workers=1), slower.")
flags.DEFINE_integer("torch_threads", None,
                     "torch.set_num_threads; default: the cores this process may use.")
flags.DEFINE_integer("classes", 1000, "Zoom-shot prompt set: classes (ImageNet: 1000).")
flags.DEFINE_integer("templates", 80, "Zoom-shot prompt set: templates per class (80).")
flags.DEFINE_float("logit_scale", 100.0, "CLIP's exp(logit_scale) (OpenAI CLIP: 100).")
flags.DEFINE_integer("zs_steps", 100, "Timed Zoom-shot steps (part zoomshot).")
flags.DEFINE_integer("zs_warmup", 5, "Untimed Zoom-shot steps first (compile, caches).")
flags.DEFINE_list("zs_batches", [], "Part zoomshot: time these batch sizes, each with its own "
                  "warm-up (default: --zs_config.train.batch_size alone).")
flags.DEFINE_integer("epoch_images", 256, "Images of the generated folder (part epoch).")
flags.DEFINE_integer("epoch_extract_batch", 32,
                     "Extract batch of part epoch (the binary's default, 256, suits "
                     "accelerators); --epoch_images must be at least twice it.")
flags.DEFINE_integer("epoch_batch", 64,
                     "Training batch of part epoch: a few steps per epoch on a small cache.")
flags.DEFINE_enum("epoch_vision", "dinov2_s14", ["dinov2_s14", "dinov2_b14"],
                  "Random-init vision encoder of part epoch. s14 keeps the part near 2 min "
                  "on 2 CPU cores; b14 (zoomshot's default) extracts ~3x slower, which "
                  "only lowers the ratio.")
flags.DEFINE_string("json_out", "", "Also write the figures as JSON here (atomically; gs:// ok).")
FLAGS = flags.FLAGS

# ----------------------------------------------------------------------------
# Synthetic features.


def synthetic_features(n: int, m: int, d: int, rank: int, target_r2: float, seed: int):
  """Seeded (v [n, m], c [n, d]) float32 pairs with a known best linear R².

  v: correlated Gaussian, a rank-`rank` latent factor with a decaying
  spectrum (singular values ~ 1/sqrt(1+i)) plus isotropic noise and a mean
  offset, like real encoder features (a few strong directions, a non-zero
  mean). c = v A + b + e, with e's variance set so that the population R² of
  the best linear map (pooled over entries, per-column means) is
  `target_r2`: the fit is realistic (< 1) rather than exact.
  """

  rng = np.random.default_rng(seed)
  spectrum = (1.0 / np.sqrt(1.0 + np.arange(rank))).astype(np.float32)
  loadings = rng.standard_normal((rank, m), np.float32) * (2.0 / math.sqrt(rank))
  v = rng.standard_normal((n, rank), np.float32) * spectrum @ loadings
  v += 0.5 * rng.standard_normal((n, m), np.float32)
  v += rng.standard_normal(m, np.float32)
  a = rng.standard_normal((m, d), np.float32) / math.sqrt(m)
  c = v @ a + 0.3 * rng.standard_normal(d, np.float32)
  # Noise for the target R²: signal variance per column, summed over columns,
  # is explained; the noise adds (1 - r2) / r2 of it.
  signal_var = float(np.var(c[: min(n, 20_000)], axis=0, dtype=np.float64).mean())
  c += math.sqrt(signal_var * (1.0 - target_r2) / target_r2) * rng.standard_normal(
      (n, d), np.float32)
  return v, c


def aligned(train: dict, heldout: dict):
  """Variance alignment as the program's train stage does (METHODS.md §1).

  Returns ((v, c) train, (v, c) held-out, scales {"vision", "clip"}, class_norm).
  """
  mv, mc = features.moments(train["vision"]), features.moments(train["clip"])
  cv = linear.alignment_scale(mv["sum"], mv["sumsq"], mv["entries"])
  ci = linear.alignment_scale(mc["sum"], mc["sumsq"], mc["entries"])
  class_norm = linear.rms_norm(mc["sumsq"], mc["rows"], ci)

  def scale(part):
    return (np.asarray(part["vision"], np.float32) * np.float32(cv),
            np.asarray(part["clip"], np.float32) * np.float32(ci))

  return scale(train), scale(heldout), {"vision": cv, "clip": ci}, class_norm


def r2(kernel, bias, x, y, chunk: int = 16_384) -> float:
  """R² of x @ kernel + bias against y, pooled over entries (`linear.r2_sums`)."""
  kernel = np.asarray(kernel, np.float32)
  bias = np.asarray(bias, np.float32)
  total = None
  for i in range(0, len(x), chunk):
    s = linear.r2_sums(x[i:i + chunk] @ kernel + bias, y[i:i + chunk])
    s = {k: np.asarray(v, np.float64) for k, v in s.items()}
    total = s if total is None else {k: total[k] + s[k] for k in s}
  return linear.r2_from_sums(total)


# ----------------------------------------------------------------------------
# Part t2c: the reference recipe in PyTorch, our closed form, our SGD.


def ours_closed_form(v, c, cfg, mesh):
  """`ridge.fit_arrays` twice: (params, first-call seconds, second-call seconds).

  The first call includes tracing and compiling the batch-sums function; the
  second reuses it (it is cached per mesh), the cost on any later fit.
  """

  times = []
  for _ in range(2):
    start = time.perf_counter()
    params = ridge.fit_arrays(v, c, mesh,
                             weight_decay=cfg.zoomshot.ridge_weight_decay)
    times.append(time.perf_counter() - start)
  return params, times[0], times[1]


def ours_sgd(v, c, cfg, mesh, seed: int):
  """Our SGD: training.make_step over ArrayBatches, a plain Python loop.

  Returns (params, wall seconds incl. compile, steady seconds): steady is the
  time of steps 2..N scaled to N steps (step 1 traces and compiles).
  """
  # Features are aligned already (as they are for every method here).
  loss_fn = text_to_concept.make_loss_fn(zoomshot.aligned_features(1.0, 1.0))
  batches = training.ArrayBatches({"vision": v, "clip": c}, cfg.train.batch_size,
                                  seed, mesh)
  total = cfg.train.epochs * batches.steps_per_epoch
  tx = training.make_optimizer(cfg.optimizer, total)
  params = methods.init_params("text_to_concept", jax.random.PRNGKey(seed), v.shape[1],
                               c.shape[1])
  state = sharding.replicate(training.init_state(params, tx), mesh)
  step_fn = training.make_step(loss_fn, tx, mesh, seed=seed)
  start = time.perf_counter()
  state, metrics = step_fn(state, batches(0), {})
  jax.block_until_ready(state)
  first = time.perf_counter() - start
  for s in range(1, total):
    state, metrics = step_fn(state, batches(s), {})
  jax.block_until_ready(state)
  wall = time.perf_counter() - start
  if not bool(metrics["finite"]):
    raise RuntimeError("our SGD diverged (a non-finite loss at the last step).")
  steady = (wall - first) * total / max(total - 1, 1)
  return jax.device_get(state["params"]["h"]), wall, steady


def run_t2c(train, held, mesh) -> dict:
  cfg = FLAGS.t2c_config
  (v, c), (hv, hc) = train, held
  opt = cfg.optimizer
  print(f"\n## Text-to-Concept fit: {len(v):,} x {v.shape[1]} -> {c.shape[1]} "
        f"(+{len(hv):,} held-out)\nrecipe: {opt.name} lr {opt.learning_rate:g} momentum "
        f"{opt.momentum:g} weight decay {opt.weight_decay:g}, batch {cfg.train.batch_size}"
        f", {cfg.train.epochs} epochs; closed form L2 "
        f"{cfg.zoomshot.ridge_weight_decay:g}", flush=True)
  rows = []

  def add(name, params, wall, steady, note):
    rows.append({"fit": name, "wall_s": wall, "steady_s": steady,
                 "train_r2": r2(params["kernel"], params["bias"], v, c),
                 "heldout_r2": r2(params["kernel"], params["bias"], hv, hc), "note": note})
    print(f"  {name}: {wall:.2f} s, held-out R² {rows[-1]['heldout_r2']:.4f}", flush=True)

  ref = torch_reference(v, c, cfg, FLAGS.rng_seed, FLAGS.torch_loader)
  if ref is not None:
    add("PyTorch reference (SGD)", ref[0], ref[1], None, ref[2])
  p, first, second = ours_closed_form(v, c, cfg, mesh)
  add("ours, closed form", p, first, second, "ridge.fit_arrays")
  p, wall, steady = ours_sgd(v, c, cfg, mesh, FLAGS.rng_seed)
  add("ours, SGD", p, wall, steady, "training.make_step, Python loop")

  base = rows[0] if ref is not None else None
  print("\n| fit | wall s (incl. compile) | steady s (no compile) | train R² | held-out R² "
        "| speed-up vs PyTorch (wall / steady) |\n| --- | ---: | ---: | ---: | ---: | ---: |")
  for r in rows:
    steady = "—" if r["steady_s"] is None else f"{r['steady_s']:.2f}"
    if base is None:
      speed = "—"
    else:
      r["speedup_wall"] = base["wall_s"] / r["wall_s"]
      r["speedup_steady"] = base["wall_s"] / (r["steady_s"] or r["wall_s"])
      speed = f"{r['speedup_wall']:.1f}× / {r['speedup_steady']:.1f}×"
    print(f"| {r['fit']} | {r['wall_s']:.2f} | {steady} | {r['train_r2']:.4f} | "
          f"{r['heldout_r2']:.4f} | {speed} |")
  for r in rows:
    print(f"  {r['fit']}: {r['note']}")
  if base is not None:
    best = max(rows[1:], key=lambda r: r["speedup_wall"])
    met = best["speedup_wall"] >= 20 and best["heldout_r2"] >= base["heldout_r2"] - 1e-4
    print(f"goal (>= 20x faster at equal or better held-out R²): {best['fit']} is "
          f"{best['speedup_wall']:.1f}x at R² {best['heldout_r2']:.4f} vs "
          f"{base['heldout_r2']:.4f} -> {'met' if met else 'NOT met'}", flush=True)
  return {"rows": rows, "pytorch_ran": ref is not None}


# ----------------------------------------------------------------------------
# Part zoomshot (and the training half of part epoch).


def prompt_set(classes: int, templates: int, dim: int, seed: int):
  """(text [K*J, d] unit rows, classifier W [K, d]) as the program builds them."""
  t = np.random.default_rng(seed).standard_normal((classes * templates, dim), np.float32)
  t /= np.linalg.norm(t, axis=-1, keepdims=True)
  w = t.reshape(classes, templates, dim).mean(axis=1)
  w /= np.linalg.norm(w, axis=-1, keepdims=True)
  return t, w


class ZoomshotTrainer:
  """The program's cached-features Zoom-shot step on given aligned features."""

  def __init__(self, v, c, class_norm: float, batch_size: int, mesh, seed: int):
    cfg = FLAGS.zs_config
    self.hyper = zoomshot.Hyper(
        weights=tuple(sorted(dict(cfg.zoomshot.loss).items())),
        paired=cfg.zoomshot.paired, pgkd_mode=cfg.zoomshot.pgkd_mode,
        tau=cfg.zoomshot.pgkd_temperature, logit_scale=FLAGS.logit_scale,
        class_norm=class_norm, text_batch=cfg.zoomshot.text_batch_size)
    self.batches = training.ArrayBatches(
        {"vision": v, "clip": c}, batch_size, seed, mesh,
        groups=None if self.hyper.paired else [["vision"], ["clip"]])
    self.batch_size = batch_size
    tx = training.make_optimizer(cfg.optimizer,
                                 cfg.train.epochs * self.batches.steps_per_epoch)
    params = methods.init_params("zoomshot", jax.random.PRNGKey(seed), v.shape[1], c.shape[1])
    self.state = sharding.replicate(training.init_state(params, tx), mesh)
    text, classes = prompt_set(FLAGS.classes, FLAGS.templates, c.shape[1], seed)
    self.consts = sharding.replicate({"text": text * class_norm, "classes": classes}, mesh)
    loss_fn = zoomshot.make_loss_fn(self.hyper, zoomshot.aligned_features(1.0, 1.0))
    self.step_fn = training.make_step(loss_fn, tx, mesh, seed=seed)
    self.step = 0

  def run(self, steps: int) -> float:
    """Runs `steps` steps, blocks; returns the seconds they took."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.step_fn(self.state, self.batches(self.step), self.consts)
      self.step += 1
    jax.block_until_ready(self.state)
    seconds = time.perf_counter() - start
    if not bool(metrics["finite"]):
      raise RuntimeError(f"Zoom-shot diverged by step {self.step}.")
    return seconds


def run_zoomshot(train, class_norm: float, mesh) -> dict:
  cfg = FLAGS.zs_config
  v, c = train
  batches = [int(b) for b in FLAGS.zs_batches] or [cfg.train.batch_size]
  rows = []
  for batch in batches:
    trainer = ZoomshotTrainer(v, c, class_norm, batch, mesh, FLAGS.rng_seed)
    if not rows:
      terms = [k for k, w in trainer.hyper.weights if w]
      print(f"\n## Zoom-shot training throughput on cached features ({len(v):,} x "
            f"{v.shape[1]} -> {c.shape[1]})\nterms {'+'.join(terms)}; prompt set "
            f"{FLAGS.classes} x {FLAGS.templates}, text batch {trainer.hyper.text_batch}; "
            f"{cfg.optimizer.name}; {FLAGS.zs_steps} steps after {FLAGS.zs_warmup} warm-up\n"
            f"| batch | steps/s | samples/s | ms/step | epoch of {len(v):,} (s) | warm-up s "
            f"(incl. compile) |\n| ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    compile_s = trainer.run(FLAGS.zs_warmup)
    seconds = trainer.run(FLAGS.zs_steps)
    rate = FLAGS.zs_steps * batch / seconds
    rows.append({"batch": batch, "samples_per_s": rate, "ms_per_step":
                 seconds / FLAGS.zs_steps * 1e3, "warmup_s": compile_s})
    print(f"| {batch} | {FLAGS.zs_steps / seconds:.1f} | {rate:,.0f} | "
          f"{seconds / FLAGS.zs_steps * 1e3:.2f} | {len(v) / rate:.2f} | {compile_s:.2f} |",
          flush=True)
    del trainer
  return {**rows[0], "rows": rows}


def main(argv):
  check_args(argv, FLAGS, n=1, heldout=1, vision_dim=1, clip_dim=1, rank=1, torch_threads=1,
             classes=1, templates=1, zs_steps=1, zs_warmup=0, epoch_images=1,
             epoch_extract_batch=1, epoch_batch=1)
  if not 0 < FLAGS.target_r2 < 1:
    raise usage_error(f"--target_r2={FLAGS.target_r2}: give an R² between 0 and 1 (exclusive).")
  unknown = set(FLAGS.parts) - set(_PARTS)
  if unknown:
    raise usage_error(f"--parts: unknown {sorted(unknown)}; choose from {_PARTS}.")
  if "epoch" in FLAGS.parts and FLAGS.epoch_images < 2 * FLAGS.epoch_extract_batch:
    raise usage_error(f"--epoch_images={FLAGS.epoch_images} must be at least twice "
                      f"--epoch_extract_batch={FLAGS.epoch_extract_batch}.")
  mesh = sharding.make_mesh([("data", -1)])
  for field, cfg in (("t2c_config", FLAGS.t2c_config), ("zs_config", FLAGS.zs_config)):
    # A multiple of the devices.
    sharding.local_batch_size(cfg.train.batch_size, mesh, f"{field}.train.batch_size")
  print(f"host: {available_cores()} usable cores; jax {jax.__version__} on "
        f"{jax.default_backend()} ({mesh.devices.size} x {jax.devices()[0].device_kind}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average "
        f"{os.getloadavg()[0]:.2f}", flush=True)
  out = {"host": {"cores": available_cores(), "jax": jax.__version__,
                  "backend": jax.default_backend(), "devices": mesh.devices.size,
                  "device_kind": jax.devices()[0].device_kind,
                  "load_average": os.getloadavg()[0]}, "stubbed": STUBBED, "n": FLAGS.n}
  if STUBBED:
    print(f"not installed, stood in for (bench_util.stub_missing): {', '.join(STUBBED)}")
  if {"t2c", "zoomshot"} & set(FLAGS.parts):
    start = time.perf_counter()
    v, c = synthetic_features(FLAGS.n + FLAGS.heldout, FLAGS.vision_dim, FLAGS.clip_dim,
                              FLAGS.rank, FLAGS.target_r2, FLAGS.rng_seed)
    raw_train = {"vision": v[:FLAGS.n], "clip": c[:FLAGS.n]}
    raw_held = {"vision": v[FLAGS.n:], "clip": c[FLAGS.n:]}
    train, held, scales, class_norm = aligned(raw_train, raw_held)
    del v, c, raw_train, raw_held
    print(f"synthetic features: {time.perf_counter() - start:.1f} s to generate (not "
          f"timed below); alignment scales vision {scales['vision']:.4g}, clip "
          f"{scales['clip']:.4g}; population R² {FLAGS.target_r2}", flush=True)
    if "t2c" in FLAGS.parts:
      out["t2c"] = run_t2c(train, held, mesh)
    if "zoomshot" in FLAGS.parts:
      out["zoomshot"] = run_zoomshot(train, class_norm, mesh)
    del train, held
  if "epoch" in FLAGS.parts:
    out["epoch"] = run_epoch(mesh, out.get("zoomshot"), aligned, ZoomshotTrainer)
  print(f"load average after: {os.getloadavg()[0]:.2f}")
  if FLAGS.json_out:  # io_utils' writer (gs:// too) needs TensorFlow
    (write_json if STUBBED else io_utils.atomic_write_json)(FLAGS.json_out, out)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
  app.run(main)
