r"""Zoom-shot (METHODS.md §2): map a vision encoder into CLIP's space.

  python -m zoomshot_jax.main --config=configs/zoomshot.py:dinov2_b14,b32,20pct \
      --workdir=gs://bucket/zoomshot/dinov2_b14-b32-20pct

The argument is comma-separated words, at most one of each kind (defaults
first):
  vision encoder: dinov2_b14 | dinov2_s14 | dinov2_l14 | deit_b16 | vit_b16 |
                  beit_b16 | resnet50 | regnet_y4
  CLIP:           b32 | b16 | l14
  regime:         20pct (20% of ImageNet train, 1 epoch) |
                  1pct_20ep (1% for 20 epochs; the data/compute trade-off)
  or alone:
  toy             the random tiny models and image folder that
                  `python -m zoomshot_jax.tools.toy_assets --out=DIR` writes,
                  read from --config.toy_root=DIR (a smoke run of every stage
                  in about a minute on a CPU)
Which fields follow the paper and which are ours: see the README ("Zoom-shot
and Text-to-Concept"). Any field can be overridden; a misspelt one is an error.
"""

import ml_collections

from zoomshot_jax.configs import common

# launch/zoomshot_grid.py checks its grid's words against these tables here.
CLIPS, VISION = common.CLIPS, common.VISION
REGIMES = {"20pct": (0.2, 1), "1pct_20ep": (0.01, 20)}
# toy's tiny models and short schedule replace all three, so it is a word of
# each kind: `toy,b16` is refused rather than quietly not using b16.
KINDS = {"vision": [*VISION, "toy"], "clip": [*CLIPS, "toy"], "regime": [*REGIMES, "toy"]}


def get_config(arg=None):
  words = common.parse_words(arg, KINDS, "configs/zoomshot.py")
  toy = "toy" in words.values()
  if toy:  # the defaults first, which _toy then replaces
    words = {}
  vision = VISION[words.get("vision", "dinov2_b14")]
  fraction, epochs = REGIMES[words.get("regime", "20pct")]

  config = ml_collections.ConfigDict()
  config.program = "zoomshot"
  config.stages = "extract,train,eval"
  config.seed = 0

  # Frozen encoders (hub ids or save_pretrained directories).
  config.clip = CLIPS[words.get("clip", "b32")]
  config.vision = ml_collections.ConfigDict(
      {"name": vision[0], "checkpoint": vision[1], "pooling": vision[2]})
  config.random_init = False          # random weights of those configs (smoke tests)
  config.dtype = "float32"            # encoders' compute dtype ("bfloat16" on TPU/GPU)

  # Where tfds datasets live (training and evaluation alike).
  config.data_dir = ""
  config.tfds_download = False
  config.verify_images = True
  # Training images: unlabeled; only the class names of the prompt set are used.
  config.data = ml_collections.ConfigDict({
      "dataset": "imagenet2012",
      "split": "train",
      "train_fraction": fraction,     # seeded random subset of the split (paper: 0.2 / 0.01)
      "heldout_examples": 10_000,     # other train images, for R² and agreement (ours)
      # features.mode=online: this host's decoded training images are held in
      # memory when they fit (GB; 0 = decode them every epoch).
      "in_memory_gb": 1.0,
  })

  # Frozen-encoder features: cached once (stage extract) or computed in the step.
  config.features = ml_collections.ConfigDict({
      "mode": "cached",               # or "online": encoders run inside the step
      "augment": False,               # online mode: random resized crop + flip (ours)
      "cache_dir": "",                # "" = <workdir>/features
      "dtype": "float16",             # storage; float32 for encoders with huge activations
      "shard_size": 16_384,           # examples per cache file (resume granularity)
      "batch_size": 256,              # extraction batch
  })

  # The method (METHODS.md §2). The paper's `cycle` is cycle_image + cycle_text.
  config.zoomshot = ml_collections.ConfigDict({
      "method": "zoomshot",           # or "text_to_concept"
      "loss": {"mse": 1.0, "cycle_image": 1.0, "cycle_text": 1.0, "pgkd_clip": 1.0,
               "pgkd_vision": 1.0},
      "paired": True,                 # False: independent shuffles; only cycle terms
      "pgkd_mode": "kl",              # or "hard_ce" (the paper's ablation)
      "pgkd_temperature": 1.0,        # tau (ours)
      "text_batch_size": 256,         # prompts per step in the text cycle (ours)
      # Prompt set for the text cycle and the distillation terms: the training
      # dataset's class names x templates (ImageNet: 1000 x 80), or files.
      # Their embeddings are cached like classifiers ("" = $ZOOMSHOT_CACHE or
      # ~/.cache/zoomshot_jax; "none" = off), encoded batch_size at a time.
      "prompts": {"classnames_file": "", "templates_file": "", "cache_dir": "",
                  "batch_size": 256},
      "init": "random",               # or "ridge": start h and g from the closed form
      "solver": "sgd",                # "closed_form": Text-to-Concept only
      "ridge_weight_decay": 5e-4,     # the closed form's L2 (= the recipe's weight decay)
  })

  # Optimisation (ours: AdamW, lr 1e-3, cosine decay, batch 256).
  config.train = ml_collections.ConfigDict({
      "epochs": epochs, "batch_size": 256,
      "log_every": 100,
      "eval_every": 1000,             # held-out R² and agreement
      "checkpoint_every": 1000, "keep_checkpoints": 3,
  })
  config.optimizer = common.optimizer()

  # Stage eval: the evaluators (configs/zeroshot_eval.py), on the mapped
  # encoder and, with reference_clip, on CLIP itself.
  config.evals = ml_collections.ConfigDict({"zeroshot": common.zeroshot_eval(
      common.DATASET_GROUPS["all"], config)})
  config.reference_clip = True
  # jax's persistent compilation cache: "" = $ZOOMSHOT_CACHE/jax or
  # ~/.cache/zoomshot_jax/jax; a directory or gs:// path; "none" = off.
  config.compilation_cache = ""
  config.mesh = [("data", -1)]
  if toy:
    _toy(config)
  return config


def _toy(config):
  """Every stage on toy_assets' random tiny models and 90-image folder.

  The folder is config.toy_root (toy_assets' --out), given on the command
  line: a config holds no machine's paths. Overrides are applied after
  get_config, so the paths are references to the root, computed when read:
  --config.toy_root=DIR moves all of them. Default "." (the current directory).
  """
  config.toy_root = "."
  root = config.get_ref("toy_root")
  config.clip = root + "/clip"
  config.vision.update({"name": "vit", "checkpoint": root + "/vit", "pooling": "cls"})
  config.data.dataset = "folder:" + root + "/images"
  config.evals.zeroshot.datasets = "folder:" + root + "/images"
  config.data.train_fraction, config.data.heldout_examples = 0.7, 16
  config.train.batch_size = config.features.batch_size = config.evals.zeroshot.batch_size = 16
  config.train.update(epochs=2, log_every=2, eval_every=4, checkpoint_every=4)
