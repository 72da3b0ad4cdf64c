r"""Fine-tuning the VL student on VQA v2, SNLI-VE or VCR: the CLIP-TD baseline
(METHODS.md §5, the student without distillation), on the demo world's files
or on the datasets as distributed.

  python -m zoomshot_jax.main --config=configs/vl_finetune.py:vqa,world,low1 \
      --workdir=/tmp/vl_vqa_world_low1
  python -m zoomshot_jax.main --config=configs/vl_finetune.py:snli_ve,real \
      --workdir=DIR --config.data.dir=/data/snli_ve

The argument is comma-separated words, at most one of each kind (defaults first):
  task:   vqa | snli_ve | vcr
  data:   world (the demo world's tasks, written into <workdir>/data; student
          world_tiny) | real (the files as distributed under config.data.dir;
          student vilt_b32 from bert-base-uncased and a ViT-B/32's patches)
  regime: full | low0.1 | low1 | low5 | low10 (a seeded percent of the training
          data, config.data.subset_seed) | shift (world: train clean, test on
          the same val scenes rendered "photo", clean val reported too; real:
          config.data.split_file {"train": ids, "test": ids} over train + val,
          or for vqa without one the VQA-CP v2 files)
  scale:  tiny (16 world images, a few steps: tests and smoke runs)
  distill: none (the baseline) | naive | select | weight | clip_td (CLIP-TD
          and its ablations, config.distill; docs/clip_td.md)

Files under config.data.dir, by their distributed names (the world writes
the same layout): vqa v2_OpenEnded_mscoco_<split>_questions.json +
v2_mscoco_<split>_annotations.json (VQA-CP: vqacp_v2_<train|test>_*.json),
COCO images in <image_dir>/<split>/; snli_ve snli_ve_<split>.jsonl +
flickr30k_images/; vcr <split>.jsonl + vcr1images/. Generic split names
(train, val, test) map to each dataset's own (train2014, dev, ...).

The recipe is ViLT's where it has one (AdamW lr 1e-4, weight decay 0.01,
warm-up 10% of the steps, VQA answers seen >= 9 times, 40 text tokens,
384 px); the rest (SNLI-VE and VCR epochs, VCR's 128 tokens, the world's
sizes and learning rate, cosine decay) is ours.
"""

import ml_collections

from zoomshot_jax.configs import common

TASKS = ("vqa", "snli_ve", "vcr")
DATA = ("world", "real")
REGIMES = ("full", "low0.1", "low1", "low5", "low10", "shift")
SCALES = ("tiny",)
# CLIP-TD's modes (methods/clip_td.py): the baseline, naive distillation
# (all tokens, uniform weights), the two ablations, and the full method.
DISTILL = ("none", "naive", "select", "weight", "clip_td")
KINDS = {"task": TASKS, "data": DATA, "regime": REGIMES, "scale": SCALES, "distill": DISTILL}
STUDENTS = {"world": "world_tiny", "real": "vilt_b32"}   # models/vl_student.py's PRESETS
# Text tokens per sequence: the world's longest (VCR QA->R: question, answer
# and rationale) fit; real ones as ViLT (VCR: ours, its texts are longer).
MAX_LENGTH = {"world": {"vqa": 16, "snli_ve": 16, "vcr": 48},
              "real": {"vqa": 40, "snli_ve": 40, "vcr": 128}}
EPOCHS = {"world": {"vqa": 10, "snli_ve": 10, "vcr": 10},
          "real": {"vqa": 10, "snli_ve": 5, "vcr": 10}}


def get_config(arg=None):
  words = common.parse_words(arg, KINDS, "configs/vl_finetune.py")
  task, source = words.get("task", "vqa"), words.get("data", "world")
  tiny = words.get("scale") == "tiny"

  config = ml_collections.ConfigDict()
  config.program = "vl_finetune"
  config.seed = 0
  config.task = task
  config.regime = words.get("regime", "full")

  config.data = ml_collections.ConfigDict({
      "source": source,
      "dir": "",              # real: the task's files (see above); world: "" = <workdir>/data
      "image_dir": "",        # "" = the task's usual place beside its files
      "train_split": "train",
      "eval_split": "val",    # the labelled held-out split (VQA test2015, VCR test have none)
      "split_file": "",       # real shift: {"train": [ids], "test": [ids]}
      "subset_seed": 0,       # which low-shot subset (readers.low_shot)
      # "" = world: a word-level tokenizer written into <workdir>/data; real:
      # bert-base-uncased. A hub id or a save_pretrained directory.
      "tokenizer": "",
      "max_length": MAX_LENGTH[source][task],
      # VQA: answers that are the answer of at least this many training questions.
      "answer_min_count": 1 if tiny else 9,
      # Pixels are scaled to [0, 1], then (x - mean) / std (ViT-B/32's own).
      "image_mean": (0.5, 0.5, 0.5),
      "image_std": (0.5, 0.5, 0.5),
      "check_images": True,   # refuse missing image files before training
  })
  # The demo world's files (data=world): images per split, side, world seed.
  config.world = ml_collections.ConfigDict({
      "train": 16 if tiny else 2000, "val": 8 if tiny else 400, "image_size": 32, "seed": 0})

  config.student = ml_collections.ConfigDict({
      "preset": STUDENTS[source],
      "overrides": {},        # VLConfig fields over the preset's
      # Start the text side and encoder from BERT, the image tokens from a ViT
      # (hub ids or directories; "" = random init).
      "bert_checkpoint": "bert-base-uncased" if source == "real" else "",
      "vit_checkpoint": "google/vit-base-patch32-384" if source == "real" else "",
  })
  config.train = ml_collections.ConfigDict({
      "epochs": EPOCHS[source][task],
      "steps": 4 if tiny else 0,   # > 0: this many steps instead of epochs
      # Epochs, but at least this many steps: 10 epochs of a 1% subset are
      # 7-21 steps on the world (17 on VQA v2 at 0.1%), too few to fit anything,
      # so every low-shot run trains this long (ours).
      "min_steps": 0 if tiny else (200 if source == "world" else 1000),
      "batch_size": 8 if tiny else (64 if source == "world" else 256),
      "warmup_fraction": 0.1,      # linear warm-up over this fraction of the steps
      "log_every": 2 if tiny else 50,
      "checkpoint_every": 2 if tiny else 1000,
      "keep_checkpoints": 2,
  })
  config.optimizer = common.optimizer(
      learning_rate=1e-3 if source == "world" else 1e-4, schedule="cosine",
      weight_decay=0.01, decay_params="matrices")
  config.evals = ml_collections.ConfigDict({"vl": {
      "type": "vl_task", "batch_size": 8 if tiny else (64 if source == "world" else 256)}})
  # CLIP-TD (METHODS.md §5, docs/clip_td.md): a frozen CLIP's token
  # features distilled into the student's last layer during fine-tuning.
  # Every default here is ours (the paper's code and values are not public).
  config.distill = ml_collections.ConfigDict({
      "mode": words.get("distill", "none"),
      # A CLIP with both towers; world: "" = the demo's shipped tiny CLIP.
      "teacher": "" if source == "world" else "openai/clip-vit-base-patch32",
      "rho": 0.5,              # fraction of the teacher's tokens kept (select, clip_td)
      "loss": "cos",           # "cos" (1 - cos) | "l1" (of unit vectors)
      # λ(t): "fixed" | "linear" (decay to 0) | "ramp" (0 to λ₀) | "loss_ratio"
      "schedule": "loss_ratio",
      "lam": 1.0,              # λ₀
      "image_weight": 1.0, "text_weight": 1.0,
      # The student's hidden state distilled: 0 = embeddings, i = after layer i,
      # -1 = the last layer.
      "layer": -1,
      "vqa_candidates": 8,     # answer prompts of the VQA confidence (gold + most frequent)
      # SNLI-VE confidence prompts per label (entailment, neutral, contradiction).
      "snli_ve_templates": ("{}", "maybe {}", "not {}"),
      "teacher_max_length": 0,   # 0 = the CLIP's own (77 for OpenAI's)
      # Per host: the teacher's outputs on the training rows are computed once
      # when they fit in this (vl/teacher_cache.py); 0 = in every step.
      "teacher_cache_gb": 2.0,
  })
  config.compilation_cache = ""
  config.mesh = [("data", -1)]
  return config
