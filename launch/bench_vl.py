r"""VL fine-tuning step throughput: our VQA step against the same model and step in PyTorch.

  python launch/bench_vl.py                                  # vilt_b32 at 224 px, CPU
  python launch/bench_vl.py --preset=world_tiny --image_size=32 --batch_size=64

Both sides, same machine, same run, random weights of the same shapes: the
single-stream student (models/vl_student.py's preset: BERT embeddings for
--text_length tokens, a patch embedding with an image token and learned
positions, modality embeddings, a BERT encoder and pooler), the VQA head
(Dense(2h)-LayerNorm-GELU-Dense(answers)), BCE-with-logits summed over
answers and averaged over the batch, AdamW, dropout on. Ours: the shared
`training.make_step` with methods/vl_tasks.py's loss (uint8 images
normalised on device). PyTorch: transformers' PyTorch BertEmbeddings,
BertEncoder and BertPooler with the same image embedding written in torch,
images already float (its advantage), torch.set_num_threads = this process's
cores. Prints examples/s of each and the ratio ours / PyTorch; --json_out
writes them. Needs torch for the baseline; without it, ours alone.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_util  # noqa: E402  pylint: disable=g-import-not-at-top

flags.DEFINE_string("preset", "vilt_b32", "A preset of models/vl_student.py.")
flags.DEFINE_integer("image_size", 224, "Image side (the preset's patch size).")
flags.DEFINE_integer("text_length", 40, "Text tokens per example.")
flags.DEFINE_integer("num_answers", 3129, "VQA answer vocabulary.")
flags.DEFINE_integer("batch_size", 16, "Examples per step.")
flags.DEFINE_integer("steps", 4, "Timed steps (after 2 warm-up steps).")
bench_util.define_torch_flags(flags)
flags.adopt_module_key_flags(bench_util)   # in --help, as this script's own
flags.DEFINE_string("json_out", "", "Write the figures here (JSON).")
FLAGS = flags.FLAGS

LR, BETAS, EPS, WD = 1e-4, (0.9, 0.999), 1e-8, 0.01


def student_config():
  from zoomshot_jax.models import vl_student  # pylint: disable=g-import-not-at-top
  return vl_student.get_config(FLAGS.preset, {"image_size": FLAGS.image_size,
                                              "max_position_embeddings": FLAGS.text_length})


def make_batch():
  import numpy as np  # pylint: disable=g-import-not-at-top
  cfg = student_config()
  rng = np.random.default_rng(0)
  b, n = FLAGS.batch_size, FLAGS.text_length
  targets = np.zeros((b, FLAGS.num_answers), np.float32)
  targets[np.arange(b), rng.integers(0, FLAGS.num_answers, b)] = 1.0
  return {"input_ids": rng.integers(0, cfg.vocab_size, (b, n)).astype(np.int32),
          "attention_mask": np.ones((b, n), np.int32),
          "token_type_ids": np.zeros((b, n), np.int32),
          "image": rng.integers(0, 256, (b, cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
          "targets": targets}


def run_ours(batch) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from zoomshot_jax import sharding, training  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.methods import vl_tasks  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.models import vl_student  # pylint: disable=g-import-not-at-top

  cfg = student_config()
  module, params = vl_student.build(cfg, 0)
  hyper = vl_tasks.Hyper(task="vqa", num_answers=FLAGS.num_answers)
  inner = vl_tasks.make_loss_fn(hyper, module)

  def loss_fn(p, model_state, b, frozen, rng):
    # uint8 -> [-1, 1] on device, as the program's pipeline spec does.
    return inner(p, model_state, {**b, "image": b["image"] / 127.5 - 1.0}, frozen, rng)

  tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD)
  mesh = sharding.make_mesh([("data", -1)])
  step = training.make_step(loss_fn, tx, mesh, state_sharding=sharding.replicated(mesh))
  state = sharding.replicate(training.step.init_state(
      vl_tasks.init(params, cfg, hyper), tx, {}), mesh)
  gbatch = sharding.to_global(batch, sharding.batch_sharding(mesh))
  def run():
    nonlocal state
    state, m = step(state, gbatch, {})
    return m

  return bench_util.throughput(run, jax.block_until_ready, FLAGS.steps, FLAGS.batch_size)


def run_torch(batch):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers.models.bert import modeling_bert  # pylint: disable=g-import-not-at-top

  from zoomshot_jax.models import vl_student  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(bench_util.available_cores())
  torch.manual_seed(0)
  dev, sync = bench_util.torch_device(torch, FLAGS.torch_device)
  cfg = student_config()
  bert = vl_student.bert_config(cfg)
  bert._attn_implementation = "eager"  # pylint: disable=protected-access  (set by from_pretrained otherwise)
  h, grid = cfg.hidden_size, cfg.grid

  class Student(torch.nn.Module):
    """The same layout as models/vl_student.py, in torch."""

    def __init__(self):
      super().__init__()
      self.text = modeling_bert.BertEmbeddings(bert)
      self.patch = torch.nn.Conv2d(3, h, cfg.patch_size, cfg.patch_size)
      self.image_token = torch.nn.Parameter(torch.zeros(1, 1, h))
      self.image_pos = torch.nn.Parameter(torch.zeros(1, grid * grid + 1, h))
      self.image_norm = torch.nn.LayerNorm(h, eps=cfg.layer_norm_eps)
      self.modality = torch.nn.Embedding(2, h)
      self.encoder = modeling_bert.BertEncoder(bert)
      self.pooler = modeling_bert.BertPooler(bert)
      self.head = torch.nn.Sequential(torch.nn.Linear(h, 2 * h), torch.nn.LayerNorm(2 * h),
                                      torch.nn.GELU(), torch.nn.Linear(2 * h, FLAGS.num_answers))

    def forward(self, ids, mask, types, image):
      t = self.text(input_ids=ids, token_type_ids=types) + self.modality.weight[0]
      p = self.patch(image).flatten(2).transpose(1, 2)
      v = torch.cat([self.image_token.expand(len(p), -1, -1), p], 1) + self.image_pos
      v = self.image_norm(v) + self.modality.weight[1]
      x = torch.cat([t, v], 1)
      full = torch.cat([mask, torch.ones(v.shape[:2], dtype=mask.dtype, device=mask.device)], 1)
      ext = (1.0 - full[:, None, None, :].float()) * torch.finfo(torch.float32).min
      out = self.encoder(x, attention_mask=ext).last_hidden_state
      return self.head(self.pooler(out))

  model = Student().to(dev).train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
  ids, mask, types = (torch.from_numpy(batch[k]).long().to(dev)
                      for k in ("input_ids", "attention_mask", "token_type_ids"))
  image = (torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(dev)
  targets = torch.from_numpy(batch["targets"]).to(dev)

  def step():
    logits = model(ids, mask, types, image)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, targets, reduction="sum") / len(logits)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  return bench_util.throughput(step, lambda _: sync(), FLAGS.steps, FLAGS.batch_size), dev


def main(argv):
  bench_util.check_args(argv, FLAGS, image_size=1, text_length=1, num_answers=1, batch_size=1,
                        steps=1)
  batch = make_batch()
  cfg = student_config()
  out = {"preset": FLAGS.preset, "image_size": cfg.image_size, "text_length": FLAGS.text_length,
         "tokens": FLAGS.text_length + cfg.num_image_tokens, "batch_size": FLAGS.batch_size,
         "num_answers": FLAGS.num_answers, "cores": bench_util.available_cores()}
  bench_util.versus_torch(out, "examples", lambda: run_ours(batch), lambda: run_torch(batch),
                          FLAGS.torch, FLAGS.json_out, digits=2)


if __name__ == "__main__":
  app.run(main)
