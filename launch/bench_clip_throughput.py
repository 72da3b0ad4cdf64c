r"""Image-feature throughput of our jitted CLIP image tower vs PyTorch.

Measures images/s of `jax.jit(load_clip(...).image_features)` for a CLIP
architecture (--arch: ViT-B/32 by default, the default `transformers.CLIPConfig`;
ViT-B/16, ViT-L/14; random weights) on uint8 [B, 224, 224, 3] batches, the way the evaluator feeds it (the
normalisation runs on device, inside the timed call). In the same process it
times HF transformers' PyTorch `CLIPModel.get_image_features` on the same
architecture, given the batch already as a normalised float NCHW tensor, so
PyTorch does none of the preprocessing work we do. It prints both images/s and
the ratio ours / PyTorch (> 1 means we are faster).

On an accelerator it also prints the fraction of the device's peak reached,
from the FLOPs of the image tower counted analytically (see `vit_flops`).
Nothing is asserted: the figures are for reading.

  python launch/bench_clip_throughput.py                      # CPU, float32
  python launch/bench_clip_throughput.py --dtype=bfloat16 --peak_tflops=989
  python launch/bench_clip_throughput.py --arch=l14 --dtype=bfloat16 \
      --batch_size=256 --measure_peak_n=8192 --json_out=/tmp/clip_l14.json  # GPU

The fraction of the peak is against --peak_tflops, else the datasheet's dense
bf16 peak of a few known devices (`_BF16_PEAK_TFLOPS`: 989 for an H100/H200
SXM); --measure_peak_n=N also times an N x N x N `jnp.dot` in --dtype on
random data and reports the fraction of that measured rate.

Without torch installed the PyTorch baseline is skipped with a message.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

from bench_util import (available_cores, check_args,  # launch/, beside this script
                        usage_error, write_json)

# `python launch/<script>.py` puts launch/ on the path, not the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_enum("arch", "b32", ["b32", "b16", "l14", "tiny"],
                  "CLIP architecture: ViT-B/32, ViT-B/16, ViT-L/14 (224 px), or a tiny "
                  "2-layer ViT (smoke runs of launch/device_check.sh).")
flags.DEFINE_integer("batch_size", 32, "Images per call.")
flags.DEFINE_integer("steps", 7, "Timed calls per framework; the median is reported.")
flags.DEFINE_integer("warmup", 2, "Untimed calls first (compile, allocator, caches).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "Parameter and compute dtype, for both frameworks.")
flags.DEFINE_float("peak_tflops", None,
                   "The accelerator's dense peak in TFLOP/s for --dtype (e.g. 989 for "
                   "bf16 on an H100 SXM); default: a small table of known devices.")
flags.DEFINE_integer("torch_threads", None,
                     "torch.set_num_threads; default: the cores this process may use.")
flags.DEFINE_bool("torch", True, "Time the PyTorch baseline (skipped if torch is missing).")
flags.DEFINE_integer("measure_peak_n", 0,
                     "If > 0, also time an N x N x N jnp.dot in --dtype (random data, median "
                     "of 10) and report the fraction of that measured rate.")
flags.DEFINE_string("json_out", "", "Also write the figures as JSON here (local path).")
FLAGS = flags.FLAGS

# transformers.CLIPConfig fields per --arch (the hub checkpoints' configs);
# b32 is CLIPConfig's defaults.
_ARCHS = {
    "b32": ("ViT-B/32", {}, {}, {}),
    "b16": ("ViT-B/16", {"patch_size": 16}, {}, {}),
    "l14": ("ViT-L/14", dict(patch_size=14, hidden_size=1024, intermediate_size=4096,
                             num_hidden_layers=24, num_attention_heads=16),
            dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
            {"projection_dim": 768}),
    "tiny": ("tiny ViT", dict(patch_size=32, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=2),
             dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2), {"projection_dim": 64}),
}

TORCH_NOTE = [None]  # why the PyTorch baseline did not run, if it did not

# Dense (no sparsity) bf16 peaks in TFLOP/s, keyed by a substring of
# jax's device_kind; float32 runs should pass --peak_tflops themselves.
_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def make_config(arch: str):
  """(name, transformers.CLIPConfig) of --arch."""
  import transformers  # pylint: disable=g-import-not-at-top

  name, vision, text, top = _ARCHS[arch]
  return name, transformers.CLIPConfig(vision_config=vision, text_config=text, **top)


def measured_peak_tflops(n: int, dtype: str) -> float:
  """Median TFLOP/s of an n x n x n jnp.dot in `dtype` on random data."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  a, b = (jax.random.normal(key, (n, n), dtype) for key in jax.random.split(
      jax.random.PRNGKey(0)))
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  times = []
  for _ in range(10):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(times) / 1e12


def vit_flops(config, batch: int) -> float:
  """FLOPs (2 per multiply-add) of one image-tower forward: matmuls only.

  Patch embedding, per layer QKV/output projections, the two attention
  matmuls (scores, weighted sum) and the MLP, then the final projection.
  Norms, softmax, GELU and the normalisation are O(tokens * width) and left
  out (< 1%).
  """
  v = config.vision_config
  patches = (v.image_size // v.patch_size) ** 2
  t, d, m = patches + 1, v.hidden_size, v.intermediate_size
  embed = patches * (3 * v.patch_size ** 2) * d
  per_layer = 4 * t * d * d + 2 * t * t * d + 2 * t * d * m
  proj = d * config.projection_dim
  return 2.0 * batch * (embed + v.num_hidden_layers * per_layer + proj)


def time_interleaved(calls: dict, steps: int, warmup: int) -> dict:
  """Seconds per call of each `calls[name]()` (which must block until done).

  The frameworks take turns call by call rather than one after the other, so
  that a busy neighbour on a shared host slows both alike and the ratio stays
  meaningful even when the absolute figures wander.
  """
  for fn in calls.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in calls}
  for _ in range(steps):
    for name, fn in calls.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def write_checkpoint_dir(config, path: str) -> str:
  """Makes `path` a directory `load_clip(random_init=True)` accepts."""
  from zoomshot_jax.encoders import testing  # pylint: disable=g-import-not-at-top

  config.save_pretrained(path)
  testing.write_byte_tokenizer(path)  # load_clip loads a tokenizer too
  return path


def make_ours(config, images, dtype: str):
  """Our jitted `image_features` on uint8 NHWC images already on device.

  Returns (a blocking call, device kind, the preprocessing spec it uses).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders import load_clip  # pylint: disable=g-import-not-at-top

  # load_clip reads the directory eagerly, so it can go right after.
  with tempfile.TemporaryDirectory(prefix="bench_clip_") as path:
    clip = load_clip(write_checkpoint_dir(config, path), dtype=dtype, random_init=True)
  fn = jax.jit(clip.image_features)
  x = jax.device_put(images)  # host-to-device copy is the input pipeline's cost
  params = clip.params
  call = lambda: fn(params, x).block_until_ready()
  return call, jax.devices()[0].device_kind, clip.preprocess


def make_torch(config, images, spec, dtype: str, on_device: str):
  """HF `CLIPModel.get_image_features` on normalised NCHW floats.

  Returns (a blocking call, a description), or None without torch.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    TORCH_NOTE[0] = "torch is not installed: ours only"
    print(f"PyTorch baseline: skipped, {TORCH_NOTE[0]} "
          "(pip install -e .[bench] for the CPU build).")
    return None
  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device != on_device:
    # A CPU-only torch build on a GPU host: a GPU-vs-CPU ratio means nothing.
    TORCH_NOTE[0] = f"torch {torch.__version__} has no {on_device} support here: ours only"
    print(f"PyTorch baseline: skipped, {TORCH_NOTE[0]}.")
    return None
  torch.set_num_threads(FLAGS.torch_threads or available_cores())
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  with torch.device(device):  # on a GPU, initialise there (seconds, not tens)
    model = transformers.CLIPModel(config).eval().to(dtype=tdtype)
  # Normalised outside the timed region, by the very spec ours applies inside.
  x = spec.normalize_np(images).transpose(0, 3, 1, 2)
  x = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=tdtype)

  def call():
    with torch.inference_mode():
      model.get_image_features(pixel_values=x)
    if device == "cuda":
      torch.cuda.synchronize()

  where = (f"{torch.cuda.get_device_name()}, allow_tf32="
           f"{torch.backends.cuda.matmul.allow_tf32}" if device == "cuda"
           else f"cpu, torch.set_num_threads({torch.get_num_threads()})")
  return call, f"torch {torch.__version__}, {where}, attn={model.config._attn_implementation}"  # pylint: disable=protected-access


def peak_tflops(device_kind: str) -> float | None:
  """--peak_tflops, else the table's bf16 peak for this device, else None."""
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops
  if FLAGS.dtype != "bfloat16":
    return None
  return next((v for k, v in _BF16_PEAK_TFLOPS.items() if k in device_kind), None)


def report(name: str, times: list[float], batch: int, flops: float, peak: float | None,
           measured: float | None) -> dict:
  """Prints one line for `name`; returns its figures (from the median)."""
  med = statistics.median(times)
  ips, tflops = batch / med, flops / med / 1e12
  line = (f"{name:8s} {ips:9.1f} images/s  median {med * 1e3:8.1f} ms/batch  "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})  "
          f"{tflops:7.3f} TFLOP/s")
  if peak:
    line += f"  = {tflops / peak:.1%} of {peak:g} TFLOP/s peak"
  if measured:
    line += f"  = {tflops / measured:.1%} of the measured jnp.dot {measured:.3g} TFLOP/s"
  print(line, flush=True)
  return {"images_per_s": ips, "median_ms": med * 1e3, "tflops": tflops,
          "peak_fraction": tflops / peak if peak else None,
          "measured_peak_fraction": tflops / measured if measured else None}


def main(argv):
  check_args(argv, FLAGS, batch_size=1, steps=1, warmup=0, torch_threads=1, measure_peak_n=0)
  if FLAGS.peak_tflops is not None and FLAGS.peak_tflops <= 0:
    raise usage_error(f"--peak_tflops={FLAGS.peak_tflops}: give the device's peak, above 0 "
                      "(or leave it out for the table of known devices).")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  arch, config = make_config(FLAGS.arch)
  size, batch = config.vision_config.image_size, FLAGS.batch_size
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
  flops = vit_flops(config, batch)
  on_cpu = jax.default_backend() == "cpu"
  print(f"CLIP {arch} image tower, random weights, batch {batch}, {size}x{size}, "
        f"dtype {FLAGS.dtype}; {flops / batch / 1e9:.2f} GFLOP/image (matmuls); "
        f"median of {FLAGS.steps} calls after {FLAGS.warmup} warm-up")
  print(f"host: {available_cores()} usable cores (os.cpu_count()={os.cpu_count()}); "
        f"jax {jax.__version__} on {jax.default_backend()}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)

  ours, kind, spec = make_ours(config, images, FLAGS.dtype)
  calls = {"ours": ours}
  print(f"ours:    jax.jit(CLIP.image_features) on {kind}, uint8 NHWC in")
  theirs = None
  if FLAGS.torch:
    theirs = make_torch(config, images, spec, FLAGS.dtype,
                        "cpu" if on_cpu else "cuda")
  if theirs is not None:
    calls["pytorch"] = theirs[0]
    print(f"pytorch: CLIPModel.get_image_features, {theirs[1]}, normalised float NCHW in")
  # Shared hosts: a 1-min load well above this process's own threads means
  # neighbours compete for the cores, and absolute figures will wander.
  print(f"load average before timing: {os.getloadavg()[0]:.2f}", flush=True)

  times = time_interleaved(calls, FLAGS.steps, FLAGS.warmup)
  peak = None if on_cpu else peak_tflops(kind)
  measured = None
  if FLAGS.measure_peak_n:
    measured = measured_peak_tflops(FLAGS.measure_peak_n, FLAGS.dtype)
    print(f"measured peak: {measured:.2f} TFLOP/s ({FLAGS.measure_peak_n}^3 jnp.dot, "
          f"{FLAGS.dtype}, random data, median of 10)")
  res = {name: report(name, t, batch, flops, peak, measured) for name, t in times.items()}
  if not on_cpu and peak is None:
    print("(pass --peak_tflops for the fraction of the device's peak)")
  ratio = None
  if "pytorch" in res:
    ratio = res["ours"]["images_per_s"] / res["pytorch"]["images_per_s"]
    print(f"ratio ours/pytorch: {ratio:.2f}x images/s")
  if FLAGS.json_out:
    write_json(FLAGS.json_out, {
        "arch": arch, "batch": batch, "image_size": size, "dtype": FLAGS.dtype,
        "device_kind": kind, "backend": jax.default_backend(), "jax": jax.__version__,
        "gflop_per_image": flops / batch / 1e9, "spec_peak_tflops": peak,
        "measured_peak_tflops": measured, "ours": res["ours"],
        "pytorch": res.get("pytorch"), "pytorch_desc": theirs[1] if theirs else None,
        "pytorch_note": TORCH_NOTE[0], "ratio": ratio})
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
  app.run(main)
