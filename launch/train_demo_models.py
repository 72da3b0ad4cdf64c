r"""Trains the demo's two models once, longer than a first run can afford, and
writes them as the package's shipped checkpoints.

  python launch/train_demo_models.py --workdir=/tmp/zs_ship

The recipe is configs/demo.py's config.clip and config.vision (what
`--config.models=retrain` trains in a first run) with more steps: the CLIP on
the captioned clip_train images of the clean and the photo world (seed 0),
one ResNet per renderer on that world's vision_train. Every --eval_every
steps the CLIP's zero-shot top-1 on both worlds' test splits is logged, for
the learning curve only: the shipped checkpoint is the last step, not one
chosen by it. Writes `--out` (default zoomshot_jax/demo/shipped): one
save_pretrained directory per model and manifest.json (recipes, steps,
durations, this command, machine, curve, sha256 of every file), replacing
what is there only once everything is trained. A killed run resumes from the
workdir's Orbax checkpoints.
"""

import os
import platform
import sys
import time

from absl import app, flags

from bench_util import check_args  # launch/, beside this script

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("workdir", None, "Scratch directory: worlds, checkpoints, log.txt.")
flags.DEFINE_string("out", os.path.join(ROOT, "zoomshot_jax", "demo", "shipped"),
                    "Where the shipped models and manifest.json are written.")
flags.DEFINE_integer("clip_steps", 15000, "CLIP training steps (a first run trains 2,400).")
flags.DEFINE_integer("vision_steps", 2400, "ResNet training steps (a first run trains 600).")
flags.DEFINE_integer("eval_every", 2500, "Log the CLIP's zero-shot top-1 this often.")
flags.DEFINE_bool("verbose", False, "Also print the log on stderr.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def zeroshot_monitor(builders: dict, templates, batch_size: int = 512):
  """evaluate(clip, params) -> {"zeroshot/<renderer>_top1": %} on each world's test split."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from zoomshot_jax import evaluation  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.demo import run  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.world import render  # pylint: disable=g-import-not-at-top

  tests = {r: run.load_split(b, "test", ("image", "label")) for r, b in builders.items()}
  texts = evaluation.Prompts(tuple(render.class_names()), tuple(templates), "demo").texts()

  def evaluate(clip, params):
    enc = clip.tokenize(texts, pad_to=clip.max_length)
    txt = jax.jit(clip.text_features)(params, enc["input_ids"], enc["attention_mask"])
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    # Class embedding = mean of its normalised template embeddings (classes
    # are the outer axis of Prompts.texts()).
    cls = txt.reshape(-1, len(templates), txt.shape[-1]).mean(1)
    cls = cls / jnp.linalg.norm(cls, axis=-1, keepdims=True)
    embed = jax.jit(clip.image_features)
    out = {}
    for r, d in tests.items():
      hits = 0
      for i in range(0, len(d["label"]), batch_size):
        img = embed(params, d["image"][i:i + batch_size])
        hits += int((np.asarray((img @ cls.T).argmax(-1)) == d["label"][i:i + batch_size]).sum())
      out[f"zeroshot/{r}_top1"] = 100.0 * hits / len(d["label"])
    return out

  return evaluate


def main(argv):
  check_args(argv, FLAGS, clip_steps=1, vision_steps=1, eval_every=1)
  from zoomshot_jax import console, compile_cache  # pylint: disable=g-import-not-at-top
  workdir = FLAGS.workdir
  console.setup(workdir, FLAGS.verbose)
  compile_cache.setup("")
  import jax  # pylint: disable=g-import-not-at-top

  from zoomshot_jax import io_utils, sharding, world  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.demo import run, shipped  # pylint: disable=g-import-not-at-top

  config = demo_config.get_config()
  config.clip.steps = FLAGS.clip_steps
  config.vision.steps = FLAGS.vision_steps
  seed = config.world.seed
  data_dir = os.path.join(workdir, "tfds")
  mesh = sharding.make_mesh(config.mesh)
  timings: dict = {}
  t0 = time.time()
  builders = {}
  for r in config.clip.renderers:
    with console.stage(f"world {r}", timings, capture_stdout=True):
      builders[r] = world.prepare(world.config_name(r, seed), data_dir)

  staging = os.path.join(workdir, "shipped")
  entries = {}
  clip_dir = os.path.join(staging, "clip")
  if not os.path.exists(os.path.join(clip_dir, "config.json")):
    run.train_clip(config.clip, seed, False, data_dir, clip_dir,
                   os.path.join(workdir, "pretrain", "clip"), mesh, timings,
                   evaluate=zeroshot_monitor(builders, config.eval_templates),
                   eval_every=FLAGS.eval_every)
  entries["clip"] = {"about": {"steps": config.clip.steps,
                               "renderers": list(config.clip.renderers)},
                     "recipe": config.clip.to_dict(),
                     "train_s": timings.get("train clip")}
  for r in config.clip.renderers:
    name = f"vision_{r}"
    out = os.path.join(staging, name)
    if not os.path.exists(os.path.join(out, "config.json")):
      run.train_vision(config.vision, builders[r], out,
                       os.path.join(workdir, "pretrain", name), mesh, timings)
    entries[name] = {"about": {"steps": config.vision.steps, "renderers": [r]},
                     "recipe": config.vision.to_dict(),
                     "train_s": timings.get("train vision")}
    timings.pop("train vision", None)

  curve = _curve(os.path.join(workdir, "log.txt"))
  for name, e in entries.items():
    e["files"] = shipped.fingerprints(os.path.join(staging, name))
  manifest = {
      "command": "python launch/train_demo_models.py " + " ".join(
          f"--{k}={getattr(FLAGS, k)}" for k in ("clip_steps", "vision_steps", "eval_every")),
      "world_seed": seed,
      "date": time.strftime("%Y-%m-%d"),
      "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
                 f"({jax.devices()[0].platform})",
      "total_s": round(time.time() - t0, 1),
      "clip_zeroshot_curve": curve,
      "models": entries,
  }
  io_utils.atomic_write_json(os.path.join(staging, shipped.MANIFEST), manifest)
  _replace(staging, FLAGS.out)
  console.echo(f"Shipped models: {FLAGS.out} (manifest.json); CLIP curve: {curve}")


def _curve(log_path: str) -> list:
  """[(step, {metric: value})] of the CLIP's held-out lines in the log."""
  import re  # pylint: disable=g-import-not-at-top
  out = []
  for line in open(log_path):
    m = re.search(r"train CLIP step (\d+) held-out: (.*)$", line.strip())
    if m:
      out.append([int(m.group(1)), {k: float(v) for k, v in
                                    (kv.split("=") for kv in m.group(2).split())}])
  return out


def _replace(staging: str, out: str) -> None:
  """Copies the staged models to `out`, then swaps it in (no half-written
  shipped directory is ever left in place)."""
  import shutil  # pylint: disable=g-import-not-at-top
  tmp = out.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(staging, tmp)
  old = out.rstrip("/") + ".old"
  if os.path.exists(out):
    os.rename(out, old)
  os.rename(tmp, out)
  shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
