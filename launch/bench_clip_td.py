r"""CLIP-TD's training step against the baseline's: the same student, head,
batch and optimiser, with and without the frozen CLIP teacher in the step.

  python launch/bench_clip_td.py                                   # the world's sizes
  python launch/bench_clip_td.py --preset=vilt_b32 --image_size=384 --teacher=b32 \
      --text_length=40 --num_answers=3129 --batch_size=32

Ours both sides, same process: the VQA step of methods/vl_tasks.py (the
baseline) and of methods/clip_td.py (full CLIP-TD: the teacher's image and
text towers on the batch and on --candidates answer prompts per question,
the token selection, the projections), random weights of the given shapes.
--teacher: "world" (the demo's CLIP shape: 48 px, patch 8, width 96) or "b32"
(CLIP ViT-B/32's, 224 px). Prints examples/s of each, the ratio CLIP-TD /
baseline step time, the same with the teacher's outputs read from the batch
(vl/teacher_cache.py: the training rows' outputs computed once), and the
teacher's forward pass alone (the expected overhead); --json_out writes them.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_util  # noqa: E402  pylint: disable=g-import-not-at-top

flags.DEFINE_string("preset", "world_tiny", "A preset of models/vl_student.py.")
flags.DEFINE_integer("image_size", 32, "Student image side.")
flags.DEFINE_integer("text_length", 16, "Student text tokens.")
flags.DEFINE_integer("num_answers", 64, "VQA answer vocabulary.")
flags.DEFINE_enum("teacher", "world", ["world", "b32"], "The teacher CLIP's shape.")
flags.DEFINE_integer("teacher_length", 16, "Teacher text tokens.")
flags.DEFINE_integer("candidates", 8, "VQA answer prompts per question (the confidence).")
flags.DEFINE_integer("batch_size", 64, "Examples per step.")
flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
flags.DEFINE_string("json_out", "", "Write the figures here (JSON).")
FLAGS = flags.FLAGS


def teacher():
  """A random CLIP of --teacher's shape, as encoders.CLIP."""
  import transformers  # pylint: disable=g-import-not-at-top

  from zoomshot_jax.encoders import clip as clip_lib  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders import params as params_lib  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders.preprocessing import PreprocessSpec  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.vl import teacher as teacher_lib  # pylint: disable=g-import-not-at-top

  if FLAGS.teacher == "world":
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=64, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16),
        vision_config=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3,
                           num_attention_heads=4, image_size=48, patch_size=8),
        projection_dim=64)
  else:
    config = transformers.CLIPConfig()       # ViT-B/32's shape
  model = transformers.FlaxCLIPModel(config, _do_init=False)
  side = int(config.vision_config.image_size)
  clip = clip_lib.CLIP(checkpoint="random", params=params_lib.random_params(model, 0),
                       dim=int(config.projection_dim),
                       preprocess=PreprocessSpec(resize=side, crop=side), tokenizer=None,
                       max_length=FLAGS.teacher_length, module=model.module)
  return teacher_lib.Teacher(clip), int(config.text_config.vocab_size)


def make_batch(cfg, vocab: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  b, n, lt, c = FLAGS.batch_size, FLAGS.text_length, FLAGS.teacher_length, FLAGS.candidates
  targets = np.zeros((b, FLAGS.num_answers), np.float32)
  targets[np.arange(b), rng.integers(0, FLAGS.num_answers, b)] = 1.0
  mask = (np.arange(lt) < lt - 3).astype(np.int32)
  return {"input_ids": rng.integers(0, cfg.vocab_size, (b, n)).astype(np.int32),
          "attention_mask": np.ones((b, n), np.int32),
          "token_type_ids": np.zeros((b, n), np.int32),
          "image": rng.integers(0, 256, (b, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
          "targets": targets,
          "t_input_ids": rng.integers(0, vocab, (b, lt)).astype(np.int32),
          "t_attention_mask": np.broadcast_to(mask, (b, lt)).copy(),
          "t_align": np.where(mask > 0, np.arange(lt) % n, -1).astype(np.int32)[None].repeat(b, 0),
          "c_input_ids": rng.integers(0, vocab, (b, c, lt)).astype(np.int32),
          "c_attention_mask": np.broadcast_to(mask, (b, c, lt)).copy(),
          "c_label": np.zeros((b,), np.int32)}


def main(argv):
  bench_util.check_args(argv, FLAGS, image_size=1, text_length=1, num_answers=1,
                        teacher_length=1, candidates=1, batch_size=1, steps=1)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from zoomshot_jax import sharding, training  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.methods import clip_td, vl_tasks  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.models import vl_student  # pylint: disable=g-import-not-at-top

  cfg = vl_student.get_config(FLAGS.preset, {"image_size": FLAGS.image_size,
                                             "max_position_embeddings": FLAGS.text_length})
  module, params = vl_student.build(cfg, 0)
  hyper = vl_tasks.Hyper(task="vqa", num_answers=FLAGS.num_answers)
  t, vocab = teacher()
  batch = make_batch(cfg, vocab)
  mesh = sharding.make_mesh([("data", -1)])
  gbatch = sharding.to_global(batch, sharding.batch_sharding(mesh))
  tx = optax.adamw(1e-4, weight_decay=0.01)
  base = vl_tasks.init(params, cfg, hyper)

  def timed(inner, p, frozen, model_state, gbatch=gbatch):
    def loss_fn(q, ms, b, fz, rng):
      return inner(q, ms, {**b, "image": b["image"] / 127.5 - 1.0, "teacher_image": b["image"]},
                   fz, rng)
    step = training.make_step(loss_fn, tx, mesh, state_sharding=sharding.replicated(mesh))
    state = sharding.replicate(training.step.init_state(p, tx, model_state), mesh)
    frozen = sharding.replicate(frozen, mesh)

    def run():
      nonlocal state
      state, m = step(state, gbatch, frozen)
      return m
    return bench_util.throughput(run, jax.block_until_ready, FLAGS.steps, FLAGS.batch_size)

  out = {"preset": FLAGS.preset, "image_size": cfg.image_size, "teacher": FLAGS.teacher,
         "batch_size": FLAGS.batch_size, "candidates": FLAGS.candidates,
         "cores": bench_util.available_cores()}
  out["baseline_examples_per_s"] = timed(vl_tasks.make_loss_fn(hyper, module), base, {}, {})
  print(f"baseline step: {out['baseline_examples_per_s']:.1f} examples/s", flush=True)
  td_fn = clip_td.make_loss_fn(clip_td.Hyper(), hyper, module, t)
  out["clip_td_examples_per_s"] = timed(
      td_fn, clip_td.init(base, cfg.hidden_size, t.dim), {"clip": t.clip.params},
      {"step": jnp.zeros((), jnp.int32)})
  print(f"CLIP-TD step:  {out['clip_td_examples_per_s']:.1f} examples/s", flush=True)
  out["step_time_ratio"] = out["baseline_examples_per_s"] / out["clip_td_examples_per_s"]
  # The teacher's outputs read from the batch, as vl/teacher_cache.py gives them.
  cached = jax.jit(lambda p, b: clip_td.teacher_outputs(t, p, {**b, "teacher_image": b["image"]},
                                                        False))(t.clip.params, batch)
  cached = sharding.to_global({**batch, **jax.device_get(cached)},
                              sharding.batch_sharding(mesh))
  out["clip_td_cached_examples_per_s"] = timed(
      td_fn, clip_td.init(base, cfg.hidden_size, t.dim), {"clip": t.clip.params},
      {"step": jnp.zeros((), jnp.int32)}, cached)
  out["cached_step_time_ratio"] = (out["baseline_examples_per_s"]
                                   / out["clip_td_cached_examples_per_s"])
  print(f"CLIP-TD step, teacher outputs cached: {out['clip_td_cached_examples_per_s']:.1f} "
        f"examples/s ({out['cached_step_time_ratio']:.2f}x the baseline's step time)", flush=True)

  @jax.jit
  def teacher_forward(p, b):
    img = t.image(p, b["image"])
    txt = t.text(p, b["t_input_ids"], b["t_attention_mask"])
    cand = t.text(p, b["c_input_ids"], b["c_attention_mask"])
    return img, txt, cand
  cp = sharding.replicate(t.clip.params, mesh)
  out["teacher_forward_examples_per_s"] = bench_util.throughput(
      lambda: teacher_forward(cp, gbatch), jax.block_until_ready, FLAGS.steps, FLAGS.batch_size)
  print(f"CLIP-TD step time / baseline's: {out['step_time_ratio']:.2f}x; the teacher's forward "
        f"alone: {out['teacher_forward_examples_per_s']:.1f} examples/s", flush=True)
  bench_util.emit(out, FLAGS.json_out)


if __name__ == "__main__":
  app.run(main)
