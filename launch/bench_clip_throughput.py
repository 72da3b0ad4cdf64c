r"""Image-feature throughput of our jitted CLIP ViT-B/32 path vs PyTorch.

Measures images/s of `jax.jit(load_clip(...).image_features)` for the CLIP
ViT-B/32 architecture (random weights, the default `transformers.CLIPConfig`)
on uint8 [B, 224, 224, 3] batches, the way the evaluator feeds it (the
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

Without torch installed the PyTorch baseline is skipped with a message.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

from bench_util import available_cores  # launch/, beside this script

# `python launch/<script>.py` puts launch/ on the path, not the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
FLAGS = flags.FLAGS

# Dense (no sparsity) bf16 peaks in TFLOP/s, keyed by a substring of
# jax's device_kind; float32 runs should pass --peak_tflops themselves.
_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


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
    print("PyTorch baseline: skipped, torch is not installed "
          "(pip install -e .[bench] for the CPU build).")
    return None
  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device != on_device:
    # A CPU-only torch build on a GPU host: a GPU-vs-CPU ratio means nothing.
    print(f"PyTorch baseline: skipped, torch {torch.__version__} has no {on_device} "
          "support here.")
    return None
  torch.set_num_threads(FLAGS.torch_threads or available_cores())
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = transformers.CLIPModel(config).eval().to(device=device, dtype=tdtype)
  # Normalised outside the timed region, by the very spec ours applies inside.
  x = spec.normalize_np(images).transpose(0, 3, 1, 2)
  x = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=tdtype)

  def call():
    with torch.inference_mode():
      model.get_image_features(pixel_values=x)
    if device == "cuda":
      torch.cuda.synchronize()

  where = (torch.cuda.get_device_name() if device == "cuda"
           else f"cpu, torch.set_num_threads({torch.get_num_threads()})")
  return call, f"torch {torch.__version__}, {where}, attn={model.config._attn_implementation}"  # pylint: disable=protected-access


def peak_tflops(device_kind: str) -> float | None:
  """--peak_tflops, else the table's bf16 peak for this device, else None."""
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops
  if FLAGS.dtype != "bfloat16":
    return None
  return next((v for k, v in _BF16_PEAK_TFLOPS.items() if k in device_kind), None)


def report(name: str, times: list[float], batch: int, flops: float, peak: float | None) -> float:
  """Prints one line for `name`; returns its images/s (from the median)."""
  med = statistics.median(times)
  ips = batch / med
  line = (f"{name:8s} {ips:9.1f} images/s  median {med * 1e3:8.1f} ms/batch  "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})  "
          f"{flops / med / 1e12:7.3f} TFLOP/s")
  if peak:
    line += f"  = {flops / med / 1e12 / peak:.1%} of {peak:g} TFLOP/s peak"
  print(line, flush=True)
  return ips


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  config = transformers.CLIPConfig()  # the defaults are the ViT-B/32 architecture
  size, batch = config.vision_config.image_size, FLAGS.batch_size
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
  flops = vit_flops(config, batch)
  on_cpu = jax.default_backend() == "cpu"
  print(f"CLIP ViT-B/32 image tower, random weights, batch {batch}, {size}x{size}, "
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
  ips = {name: report(name, t, batch, flops, peak) for name, t in times.items()}
  if not on_cpu and peak is None:
    print("(pass --peak_tflops for the fraction of the device's peak)")
  if "pytorch" in ips:
    print(f"ratio ours/pytorch: {ips['ours'] / ips['pytorch']:.2f}x images/s")


if __name__ == "__main__":
  app.run(main)
