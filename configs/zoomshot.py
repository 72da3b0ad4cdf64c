r"""Zoom-shot (METHODS.md §2): map a vision encoder into CLIP's space.

  python -m zoomshot_jax.main --config=configs/zoomshot.py:dinov2_b14,b32,20pct \
      --workdir=gs://bucket/zoomshot/dinov2_b14-b32-20pct

The argument is comma-separated words, one of each kind (defaults first):
  vision encoder: dinov2_b14 | dinov2_s14 | dinov2_l14 | deit_b16 | vit_b16 |
                  beit_b16 | resnet50 | regnet_y4
  CLIP:           b32 | b16 | l14
  regime:         20pct (20% of ImageNet train, 1 epoch) |
                  1pct_20ep (1% for 20 epochs; the data/compute trade-off)
  toy:            the random tiny models and image folder that
                  `python -m zoomshot_jax.tools.toy_assets --out=/tmp/zs_toy`
                  writes (a smoke run of every stage in about a minute on a CPU)
Which fields follow the paper and which are ours: see the README ("Zoom-shot
and Text-to-Concept"). Any field can be overridden; a misspelt one is an error.
"""

import ml_collections

CLIPS = {
    "b32": "openai/clip-vit-base-patch32",
    "b16": "openai/clip-vit-base-patch16",
    "l14": "openai/clip-vit-large-patch14",
}
# (registry name, checkpoint, pooling). Poolings are ours: the paper does not
# say which token it maps; CLS for the ViTs, the pooled map for CNNs.
VISION = {
    "dinov2_b14": ("dinov2", "facebook/dinov2-base", "cls"),
    "dinov2_s14": ("dinov2", "facebook/dinov2-small", "cls"),
    "dinov2_l14": ("dinov2", "facebook/dinov2-large", "cls"),
    "deit_b16": ("vit", "facebook/deit-base-patch16-224", "cls"),
    "vit_b16": ("vit", "google/vit-base-patch16-224", "cls"),
    "beit_b16": ("beit", "microsoft/beit-base-patch16-224", "pooler"),
    "resnet50": ("resnet", "microsoft/resnet-50", "pooler"),
    "regnet_y4": ("regnet", "facebook/regnet-y-040", "pooler"),
}
REGIMES = {"20pct": (0.2, 1), "1pct_20ep": (0.01, 20)}
TOY = {"toy": "/tmp/zs_toy"}
EVAL_DATASETS = ("imagenet2012,cifar10,cifar100,oxford_iiit_pet,oxford_flowers102,food101,"
                 "cars196,dtd,eurosat,caltech101,caltech_birds2011,sun397")


def parse_words(arg, kinds):
  """{kind: word} from 'a,b,c', each word of a known kind, at most one per kind."""
  words = [w for w in (arg or "").split(",") if w]
  chosen = {}
  for w in words:
    kind = next((k for k, table in kinds.items() if w in table), None)
    if kind is None or kind in chosen:
      known = {k: sorted(t) for k, t in kinds.items()}
      raise ValueError(f"variant word {w!r} is unknown or repeats a kind; "
                       f"use at most one of each: {known}.")
    chosen[kind] = w
  return chosen


def get_config(arg=None):
  words = parse_words(arg, {"vision": VISION, "clip": CLIPS, "regime": REGIMES, "toy": TOY})
  vision = VISION[words.get("vision", "dinov2_b14")]
  fraction, epochs = REGIMES[words.get("regime", "20pct")]

  config = ml_collections.ConfigDict()
  config.program = "zoomshot"
  config.method = "zoomshot"          # or "text_to_concept"
  config.stages = "extract,train,eval"
  config.seed = 0

  # Frozen encoders (hub ids or save_pretrained directories).
  config.clip = CLIPS[words.get("clip", "b32")]
  config.vision = ml_collections.ConfigDict(
      {"name": vision[0], "checkpoint": vision[1], "pooling": vision[2]})
  config.random_init = False          # random weights of those configs (smoke tests)
  config.dtype = "float32"            # encoders' compute dtype ("bfloat16" on TPU/GPU)

  # Training images: unlabeled; only the class names of the prompt set are used.
  config.train_dataset = "imagenet2012"
  config.train_split = "train"
  config.train_fraction = fraction    # seeded random subset of the split (paper: 0.2 / 0.01)
  config.heldout_examples = 10_000    # other train images, for R² and agreement (ours)
  config.data_dir = ""
  config.tfds_download = False
  config.verify_images = True

  # Feature cache (stage extract).
  config.features = "cached"          # or "online": encoders run inside the step
  config.augment = False              # online mode: random resized crop + flip (ours)
  config.cache_dir = ""               # "" = <workdir>/features
  config.feature_dtype = "float16"    # storage; float32 for encoders with huge activations
  config.shard_size = 16_384          # examples per cache file (resume granularity)
  config.extract_batch_size = 256

  # Prompt set for the text cycle and the distillation terms: the training
  # dataset's class names x templates (ImageNet: 1000 x 80), or files.
  config.prompts = ml_collections.ConfigDict({"classnames_file": "", "templates_file": ""})

  # Loss (METHODS.md §2). The paper's `cycle` is cycle_image + cycle_text.
  config.loss = ml_collections.ConfigDict(
      {"mse": 1.0, "cycle_image": 1.0, "cycle_text": 1.0, "pgkd_clip": 1.0,
       "pgkd_vision": 1.0})
  config.paired = True                # False: independent shuffles; only cycle terms
  config.pgkd_mode = "kl"             # or "hard_ce" (the paper's ablation)
  config.pgkd_temperature = 1.0       # tau (ours)
  config.text_batch_size = 256        # prompts per step in the text cycle (ours)

  # Optimisation (ours: AdamW, lr 1e-3, cosine decay, batch 256).
  config.init = "random"              # or "ridge": start h and g from the closed form
  config.solver = "sgd"               # "closed_form": Text-to-Concept only
  config.ridge_weight_decay = 5e-4    # the closed form's L2 (= the recipe's weight decay)
  config.epochs = epochs
  config.batch_size = 256
  config.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 1e-3, "schedule": "cosine", "warmup_steps": 0,
      "weight_decay": 1e-4, "momentum": 0.9, "b1": 0.9, "b2": 0.999, "eps": 1e-8})

  config.log_every = 100
  config.eval_every = 1000            # held-out R² and agreement
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3

  # Stage eval: the zero-shot evaluator (see configs/zeroshot_eval.py).
  config.eval = ml_collections.ConfigDict({
      "datasets": EVAL_DATASETS, "split": "default", "batch_size": 256,
      "text_batch_size": 256, "cache_dir": "", "save_predictions": False,
      "classnames_file": "", "templates_file": "", "clip_reference": True})
  config.mesh = [("data", -1)]
  if "toy" in words:
    _toy(config, TOY["toy"])
  return config


def _toy(config, root):
  """Every stage on toy_assets' random tiny models and 90-image folder."""
  config.clip = f"{root}/clip"
  config.vision.update({"name": "vit", "checkpoint": f"{root}/vit", "pooling": "cls"})
  config.train_dataset = config.eval.datasets = f"folder:{root}/images"
  config.train_fraction, config.heldout_examples = 0.7, 16
  config.batch_size = config.extract_batch_size = config.eval.batch_size = 16
  config.epochs, config.log_every, config.eval_every, config.checkpoint_every = 2, 2, 4, 4
