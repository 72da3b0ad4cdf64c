"""Parts of launch/bench_text_to_concept.py: the PyTorch reference recipe and part epoch.

Imported by that script (not a script itself); reads its absl flags. The
zoomshot_jax imports are inside the functions: the script puts the repo root
on the path and stands in for missing TensorFlow first (`bench_util`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import numpy as np
from absl import flags

from bench_util import available_cores  # launch/, beside this script

FLAGS = flags.FLAGS

# DINOv2 architectures (transformers.Dinov2Config fields; the rest are the
# defaults: 12 layers, patch 14, MLP ratio 4). image_size 518 as on the hub:
# the position embeddings are interpolated to the 224 px crop at run time.
_DINOV2 = {"dinov2_s14": dict(hidden_size=384, num_attention_heads=6, image_size=518),
           "dinov2_b14": dict(hidden_size=768, num_attention_heads=12, image_size=518)}
# The hub checkpoints' preprocessor_config.json (openai/clip-vit-base-patch32,
# facebook/dinov2-*): resize the short side, centre-crop 224, bicubic.
_CLIP_PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor", "do_resize": True,
    "size": {"shortest_edge": 224}, "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224}, "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711]}
_DINOV2_PREPROCESSOR = {
    **_CLIP_PREPROCESSOR, "image_processor_type": "BitImageProcessor",
    "size": {"shortest_edge": 256}, "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225]}


def torch_reference(v, c, cfg, seed: int, loader: str):
  """The Text-to-Concept reference recipe in PyTorch on aligned features.

  nn.Linear(m, d) with its default init, SGD(lr, momentum, weight_decay),
  MSELoss, config train.batch_size and train.epochs, a fresh shuffle per epoch, the last
  partial batch kept (as DataLoader does); loss.item() every step as the
  reference accumulates its epoch loss. The reference's CosineAnnealingLR
  (T_max=200, stepped per epoch) changes the rate by < 0.2% over 5 epochs
  and is left out, as in our config (schedule "constant").

  Returns ({"kernel" [m, d], "bias" [d]} numpy, seconds, description), or None.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("PyTorch reference: skipped, torch is not installed.")
    return None

  import jax  # pylint: disable=g-import-not-at-top

  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  if device == "cuda" and not torch.cuda.is_available():
    print(f"PyTorch reference: skipped, torch {torch.__version__} has no CUDA here and "
          "a CPU-vs-GPU ratio means nothing.")
    return None
  torch.set_num_threads(FLAGS.torch_threads or available_cores())
  torch.manual_seed(seed)
  opt_cfg = cfg.optimizer
  x = torch.from_numpy(v).to(device)
  y = torch.from_numpy(c).to(device)
  model = torch.nn.Linear(v.shape[1], c.shape[1]).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=opt_cfg.learning_rate,
                        momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay)
  criterion = torch.nn.MSELoss()
  bs = cfg.train.batch_size

  def batches():
    if loader == "index":
      perm = torch.randperm(len(x), device=device)
      for i in range(0, len(x), bs):
        idx = perm[i:i + bs]
        yield x[idx], y[idx]
    else:  # the reference code's loader: per-example indexing and collation
      dataset = torch.utils.data.TensorDataset(x.cpu(), y.cpu())
      for xb, yb in torch.utils.data.DataLoader(dataset, batch_size=bs, shuffle=True,
                                                num_workers=1):
        yield xb.to(device), yb.to(device)

  start = time.perf_counter()
  for _ in range(cfg.train.epochs):
    epoch_loss = 0.0
    for xb, yb in batches():
      opt.zero_grad()
      loss = criterion(model(xb), yb)
      epoch_loss += loss.item()
      loss.backward()
      opt.step()
  if device == "cuda":
    torch.cuda.synchronize()
  seconds = time.perf_counter() - start
  params = {"kernel": model.weight.detach().cpu().numpy().T,
            "bias": model.bias.detach().cpu().numpy()}
  where = (torch.cuda.get_device_name() if device == "cuda"
           else f"cpu, {torch.get_num_threads()} threads")
  return params, seconds, f"torch {torch.__version__} ({where}), loader={loader}"


def write_random_encoders(root: str):
  """Directories that load_clip / load_vision_encoder(random_init=True) accept."""
  import transformers  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders import testing  # pylint: disable=g-import-not-at-top

  clip_dir, vision_dir = os.path.join(root, "clip"), os.path.join(root, "vision")
  transformers.CLIPConfig().save_pretrained(clip_dir)  # defaults: ViT-B/32
  testing.write_byte_tokenizer(clip_dir)               # load_clip loads a tokenizer too
  transformers.Dinov2Config(**_DINOV2[FLAGS.epoch_vision]).save_pretrained(vision_dir)
  for path, pre in ((clip_dir, _CLIP_PREPROCESSOR), (vision_dir, _DINOV2_PREPROCESSOR)):
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
      json.dump(pre, f)
  return clip_dir, vision_dir


def run_epoch(mesh, zoomshot: dict | None, aligned, trainer_cls) -> dict:
  """Extract epoch vs epochs from the cache, on a generated image folder.

  Args:
    zoomshot: part zoomshot's result, if it ran: its samples/s at the
      config's batch give the large-N limit of the ratio.
    aligned, trainer_cls: the main script's `aligned` and `ZoomshotTrainer`.
  """
  # pylint: disable=g-import-not-at-top
  from zoomshot_jax import data, encoders
  from zoomshot_jax.training import features
  # Imported here, after flag parsing: it defines absl flags of its own
  # (--out, --seed, --images_per_class) that this script does not use.
  from zoomshot_jax.tools import toy_assets
  # pylint: enable=g-import-not-at-top

  cfg = FLAGS.zs_config
  n_images, extract_bs = FLAGS.epoch_images, FLAGS.epoch_extract_batch
  with tempfile.TemporaryDirectory(prefix="bench_t2c_") as root:
    clip_dir, vision_dir = write_random_encoders(root)
    clip = encoders.load_clip(clip_dir, cfg.dtype, random_init=True, seed=0)
    vision = encoders.load_vision_encoder("dinov2", vision_dir, "cls", cfg.dtype,
                                          random_init=True, seed=1)
    classes = len(toy_assets.CLASSES)
    folder = toy_assets.write_image_folder(os.path.join(root, "images"),
                                           math.ceil(n_images / classes), FLAGS.rng_seed)
    source = data.get_source(f"folder:{folder}", "train", verify_images=False)
    idx, _ = features.select_examples(source.size(), n_images / source.size(), 0,
                                      FLAGS.rng_seed)
    part = source.subset(idx, "benchmark images")
    print(f"\n## Epoch cost: extract vs cached ({len(idx)} images, {FLAGS.epoch_vision} "
          f"(m={vision.dim}) + CLIP ViT-B/32 (d={clip.dim}), random weights, "
          f"{cfg.dtype}, extract batch {extract_bs}, train batch {FLAGS.epoch_batch})",
          flush=True)

    def extract(subset, name):
      start = time.perf_counter()
      features.extract(subset, vision, clip, mesh, os.path.join(root, name),
                       {"part": name}, extract_bs, cfg.features.shard_size,
                       cfg.features.dtype)
      return time.perf_counter() - start

    # Every extraction traces and compiles its step anew and fingerprints the
    # weights: a fixed cost that a real extract (100k+ images) amortises. A
    # one-batch extraction measures it; the steady epoch is the difference.
    one_batch = extract(part.subset(np.arange(extract_bs), "one batch"), "one_batch")
    extract_s = extract(part, "cache")
    per_image = (extract_s - one_batch) / (len(idx) - extract_bs)
    steady_extract = per_image * len(idx)
    start = time.perf_counter()
    feats = features.load(os.path.join(root, "cache"), features.encoder_identity(vision, clip))
    load_s = time.perf_counter() - start

  train, _, _, class_norm = aligned(feats, feats)
  trainer = trainer_cls(*train, class_norm, FLAGS.epoch_batch, mesh, FLAGS.rng_seed)
  spe = trainer.batches.steps_per_epoch
  epoch1 = trainer.run(spe)        # includes tracing and compiling the step
  epoch2 = trainer.run(spe)        # epoch 2+: what each further epoch costs
  ratio = epoch2 / steady_extract
  rows = [("extract epoch, as run (incl. compile, fingerprints)", extract_s, extract_s),
          ("extract: fixed cost of one call (one-batch extraction)", one_batch, None),
          ("extract epoch, steady (fixed cost removed)", steady_extract, steady_extract),
          ("cache load (once per run)", load_s, None),
          (f"train epoch 1 from cache ({spe} steps of {FLAGS.epoch_batch}, incl. compile)",
           epoch1, epoch1),
          (f"train epoch 2+ from cache ({spe} steps of {FLAGS.epoch_batch})", epoch2, epoch2)]
  print("| what | seconds | / steady extract epoch |\n| --- | ---: | ---: |")
  for name, s, share in rows:
    print(f"| {name} | {s:.3f} | {'—' if share is None else f'{share / steady_extract:.2%}'} |")
  out = {"images": len(idx), "extract_batch": extract_bs, "extract_s": extract_s,
         "extract_one_batch_s": one_batch, "extract_steady_s": steady_extract,
         "extract_images_per_s": 1.0 / per_image, "load_s": load_s,
         "train_batch": FLAGS.epoch_batch, "steps_per_epoch": spe, "epoch1_s": epoch1,
         "epoch2_s": epoch2, "ratio": ratio}
  print(f"extract: {1.0 / per_image:.1f} images/s steady; epoch 2+ / extract epoch = "
        f"{ratio:.2%}", flush=True)
  if zoomshot:
    # Per image, at the config's batch: the ratio on a cache of any size.
    out["ratio_large_n"] = (1.0 / zoomshot["samples_per_s"]) / per_image
    print(f"large-N limit (part zoomshot's {zoomshot['samples_per_s']:,.0f} samples/s at "
          f"batch {zoomshot['batch']} vs {1.0 / per_image:.1f} images/s extract): "
          f"{out['ratio_large_n']:.3%}")
  worst = max(ratio, out.get("ratio_large_n", 0.0))
  print(f"goal (epoch 2+ <= 5% of the extract epoch): {worst:.2%} -> "
        f"{'met' if worst <= 0.05 else 'NOT met'}", flush=True)
  return out
