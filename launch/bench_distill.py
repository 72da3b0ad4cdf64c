r"""Feature-distillation training throughput: our step against the same step in PyTorch.

  python launch/bench_distill.py                       # ViT-B/32 teacher, vit_tiny student
  python launch/bench_distill.py --teacher=small --student=world_resnet --image_size=48

Both sides, same machine, same run, random weights of the same shapes: a
frozen HF CLIP image tower (+ projection) as the teacher, run on the batch
inside the step; an HF student of the same architecture (models/student.py's
preset) with a linear head to d; the `l2` loss on normalised features; AdamW
(lr 5e-4, betas (0.9, 0.98), eps 1e-6). Ours: `training.make_step` with
methods/feature_distillation.py's loss, uint8 images normalised on device.
PyTorch: transformers' PyTorch CLIPVisionModelWithProjection and ViTModel /
ResNetModel / RegNetModel, the teacher under no_grad, images already float
(its advantage), torch.set_num_threads = the cores this process may use.
Prints images/s of each and the ratio ours / PyTorch; --json_out writes them.
On a GPU the baseline runs on CUDA (--torch_device).
Needs torch for the baseline (pip install '.[bench]'); without it, ours alone.
"""

import os
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_util  # noqa: E402  pylint: disable=g-import-not-at-top

flags.DEFINE_enum("teacher", "b32", ["b32", "small"], "b32: ViT-B/32 image tower (d=512); "
                  "small: the demo CLIP's shape (width 96, 3 layers, patch 8, d=64).")
flags.DEFINE_string("student", "vit_tiny", "A preset of models/student.py.")
flags.DEFINE_integer("image_size", 224, "Image side.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("steps", 8, "Timed steps (after 2 warm-up steps).")
bench_util.define_torch_flags(flags)
flags.adopt_module_key_flags(bench_util)   # in --help, as this script's own
flags.DEFINE_string("json_out", "", "Write the figures here (JSON).")
FLAGS = flags.FLAGS


def teacher_config():
  from transformers import CLIPConfig  # pylint: disable=g-import-not-at-top
  if FLAGS.teacher == "b32":
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, patch_size=32, image_size=FLAGS.image_size)
    dim = 512
  else:
    vision = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3,
                  num_attention_heads=4, patch_size=8, image_size=FLAGS.image_size)
    dim = 64
  text = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
              num_attention_heads=2, max_position_embeddings=16)
  return CLIPConfig(text_config=text, vision_config=vision, projection_dim=dim)


def run_ours(images_u8) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from transformers import FlaxCLIPModel  # pylint: disable=g-import-not-at-top

  from zoomshot_jax import encoders, models, sharding, training  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.configs import distill as distill_config  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders import params as params_lib  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders import testing  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.methods import feature_distillation as fd  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as d:
    model = FlaxCLIPModel(teacher_config(), _do_init=False)
    model.save_pretrained(d, params=params_lib.random_params(model, 0))
    testing.write_byte_tokenizer(d, 16)
    testing.write_preprocessor(d, "CLIPImageProcessor", FLAGS.image_size,
                               size={"shortest_edge": FLAGS.image_size},
                               crop_size={"height": FLAGS.image_size,
                                          "width": FLAGS.image_size})
    clip = encoders.load_clip(d)
  cfg = distill_config.get_config(FLAGS.student)
  student = models.student.build(cfg.student, FLAGS.image_size, clip.dim, 0)
  mesh = sharding.make_mesh([("data", -1)])
  spec = clip.preprocess
  h = fd.Hyper()

  def embed(params, state, x):
    return models.student.embed(student, params, state, spec.normalize(x), train=True)

  tx = training.make_optimizer(cfg.optimizer, 1000)
  # The step training.fit runs, on the state it starts from.
  step = training.make_step(fd.make_loss_fn(h, embed, clip.image_features, "image", "image"),
                            tx, mesh, state_sharding=sharding.replicated(mesh))
  state = sharding.replicate(training.step.init_state(fd.init(student.params, h), tx,
                                                      student.model_state), mesh)
  frozen = sharding.replicate({"teacher": clip.params}, mesh)
  rows = sharding.batch_sharding(mesh)
  batch = sharding.to_global({"image": images_u8, "label": np.zeros(len(images_u8), np.int32)},
                             rows)
  def run():
    nonlocal state
    state, m = step(state, batch, frozen)
    return m

  return bench_util.throughput(run, jax.block_until_ready, FLAGS.steps, len(images_u8))


def run_torch(images_u8) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from zoomshot_jax.configs import distill as distill_config  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.models import student as student_lib  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(bench_util.available_cores())
  torch.manual_seed(0)
  dev, sync = bench_util.torch_device(torch, FLAGS.torch_device)
  config = teacher_config()
  vision = config.vision_config
  vision.projection_dim = config.projection_dim
  teacher = transformers.CLIPVisionModelWithProjection(vision).eval().to(dev)
  arch, fields = student_lib.PRESETS[distill_config.get_config(FLAGS.student).student.preset]
  names = {"vit": ("ViTModel", "ViTConfig"), "resnet": ("ResNetModel", "ResNetConfig"),
           "regnet": ("RegNetModel", "RegNetConfig")}[arch]
  fields = dict(fields, **({"image_size": FLAGS.image_size} if arch == "vit" else {}))
  extra = {"add_pooling_layer": False} if arch == "vit" else {}
  student = getattr(transformers, names[0])(getattr(transformers, names[1])(**fields),
                                            **extra).to(dev)
  dim = fields["hidden_size"] if arch == "vit" else fields["hidden_sizes"][-1]
  head = torch.nn.Linear(dim, config.projection_dim).to(dev)
  params = list(student.parameters()) + list(head.parameters())
  opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
  mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
  std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)
  x = ((torch.from_numpy(np.ascontiguousarray(images_u8.transpose(0, 3, 1, 2))).float() / 255
        - mean) / std).to(dev)

  def step():
    with torch.no_grad():
      t = torch.nn.functional.normalize(teacher(pixel_values=x).image_embeds, dim=-1)
    out = student(pixel_values=x)
    f = (out.last_hidden_state[:, 1:].mean(1) if arch == "vit"
         else out.pooler_output.flatten(1))
    s = torch.nn.functional.normalize(head(f), dim=-1)
    loss = (s - t).norm(dim=-1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  return bench_util.throughput(step, lambda _: sync(), FLAGS.steps, len(images_u8)), dev


def main(argv):
  bench_util.check_args(argv, FLAGS, image_size=1, batch_size=1, steps=1)
  import numpy as np  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).integers(
      0, 256, (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3), dtype=np.uint8)
  out = {"teacher": FLAGS.teacher, "student": FLAGS.student, "image_size": FLAGS.image_size,
         "batch_size": FLAGS.batch_size, "cores": bench_util.available_cores()}
  bench_util.versus_torch(out, "images", lambda: run_ours(images), lambda: run_torch(images),
                          FLAGS.torch, FLAGS.json_out,
                          missing="torch is not installed: pip install '.[bench]'")


if __name__ == "__main__":
  app.run(main)
