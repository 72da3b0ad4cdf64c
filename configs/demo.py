r"""The demo world: a zero-download, end-to-end run of the whole method.

  python -m zoomshot_jax.demo --workdir=/tmp/zoomshot_demo
  python -m zoomshot_jax.demo --workdir=/tmp/zs_micro \
      --config=configs/demo.py:micro --config.world.renderer=photo

Words (comma-separated, at most one of each kind):
  scale:    full (default: 74k images; loads the shipped models) | micro (a
            few hundred images and a few steps, models trained here: the
            chain the test suite runs; its accuracies mean nothing)
  renderer: clean (default) | photo (textured, noisy, shaded images)
Every field can be overridden on the command line.
"""

import ml_collections

from zoomshot_jax.configs import common

SCALES = ("full", "micro")
RENDERERS = ("clean", "photo")   # world/render.py's (not imported: a config stays light)
KINDS = {"scale": SCALES, "renderer": RENDERERS}

# Prompt templates. Both sets are phrasings of the world's captions (so the
# tiny CLIP knows every word), and they are disjoint: the maps are trained
# with the first set and evaluated with the second, which they never saw.
MAP_TEMPLATES = ("a {}", "a photo of a {}", "a {} on a dark background",
                 "a {} on a light background")
EVAL_TEMPLATES = ("a picture of a {}", "there is a {} in the picture", "a drawing of a {}")


def get_config(arg=None):
  words = common.parse_words(arg, KINDS, "configs/demo.py")
  micro = words.get("scale") == "micro"

  config = ml_collections.ConfigDict()
  config.program = "demo"
  config.seed = 0

  # The world (zoomshot_jax/world): a tfds dataset generated into data_dir.
  config.world = ml_collections.ConfigDict({
      "renderer": words.get("renderer", "clean"),
      "seed": 0,
      "scale": "micro" if micro else "full",
      "data_dir": "",            # "" = <workdir>/tfds
  })

  # The two models: "shipped" loads the checkpoints installed with the
  # package (trained once, longer, by launch/train_demo_models.py: README);
  # "retrain" trains them here with config.clip and config.vision below.
  config.models = "retrain" if micro else "shipped"

  # The tiny CLIP: ViT image tower, word-level text tower, trained
  # contrastively on the captions of the clip_train splits of the worlds in
  # `renderers` (same seed): like a web-trained CLIP, it has seen photos.
  config.clip = ml_collections.ConfigDict({
      "renderers": RENDERERS,
      "steps": 2400, "batch_size": 128, "learning_rate": 1e-3, "warmup_steps": 100,
      "weight_decay": 0.05, "seed": 0, "log_every": 100, "checkpoint_every": 200,
      "width": 96, "layers": 3, "heads": 4, "patch_size": 8,
      "text_width": 64, "text_layers": 2, "max_length": 16, "projection_dim": 64,
      # ViT-style init (xavier Dense kernels) instead of N(0, 0.02): with it
      # the tower learns shape several times faster (README, The demo world).
      "init": "vit",           # or "normal": N(0, 0.02) for every kernel
      # Random flips and quarter turns of every training image: the world's
      # classes and captions do not change under them (no position words).
      "augment": True,
  })
  # The tiny vision encoder (ResNet), trained without text on which shapes
  # and which colours an image contains (multi-label).
  config.vision = ml_collections.ConfigDict({
      "steps": 600, "batch_size": 128, "learning_rate": 2e-3, "warmup_steps": 50,
      "weight_decay": 1e-4, "seed": 1, "log_every": 100, "checkpoint_every": 200,
      "widths": [32, 64, 128], "depths": [1, 1, 1],
  })

  # The maps: the Zoom-shot binary's fields (configs/zoomshot.py) that the
  # demo sets; the rest are that config's defaults.
  config.maps = ml_collections.ConfigDict({
      "train_fraction": 0.9,       # of the map_train split; the rest is held out
      "epochs": 1,                 # the paper's single epoch
      "batch_size": 128,
      "learning_rate": 1e-3,
      "text_to_concept_solver": "closed_form",  # T2C's exact optimum (or "sgd")
  })
  config.map_templates = list(MAP_TEMPLATES)
  config.eval_templates = list(EVAL_TEMPLATES)

  # ASIF: the vision encoder's and CLIP's text tower's embeddings of captioned
  # clip_train images as anchors.
  config.asif = ml_collections.ConfigDict({"anchors": 20_000, "k": 400, "p": 8})

  # Zero-shot feature distillation (configs/distill.py's program): a student
  # under a quarter of the CLIP image tower's size, trained on the world's
  # "text-to-image" images (demo/synthetic.py: prompts from the pairwise
  # prompt builder, rendered clean), evaluated on the clean and photo tests.
  config.distill = ml_collections.ConfigDict({
      "student": "world_resnet",       # models/student.py's presets
      "losses": ("l2", "contrastive"),  # one row each (contrastive: alpha = 1)
      # The contrastive term's text: each image's own prompt ("captions", the
      # reference's) or its class's prompt ("class_prompts"); README.
      "contrastive_text": "captions",
      "images_per_prompt": 4,          # 64 classes x 20 prompts x 4 = 5,120 images
      "epochs": 30, "batch_size": 128, "learning_rate": 1e-3,
  })

  # The VL rows (configs/vl_finetune.py's program on the world's versions of
  # VQA, SNLI-VE and VCR: 2,000 training and 400 val images each): the VL
  # student fine-tuned per task in `tasks` (() = no VL rows) at `regime`,
  # with config.seed, scored on val, by each of `methods`: "baseline" (no
  # CLIP) and "clip_td" (CLIP-TD with the demo's CLIP as the teacher,
  # configs/vl_finetune.py's defaults). The issues ask 1% low-shot, one
  # seed, so the first run stays within 10 minutes.
  config.vl = ml_collections.ConfigDict({
      "tasks": ("vqa", "snli_ve", "vcr"),
      "regime": "low1",               # full | low0.1 | low1 | low5 | low10 (no shift)
      "methods": ("baseline", "clip_td"),
  })

  config.batch_size = 256          # feature extraction and evaluation
  # jax's persistent compilation cache: "" = $ZOOMSHOT_CACHE/jax or
  # ~/.cache/zoomshot_jax/jax; a directory or gs:// path; "none" = off.
  config.compilation_cache = ""
  config.mesh = [("data", -1)]

  if micro:
    config.clip.update(steps=12, batch_size=32, log_every=4, checkpoint_every=4)
    config.vision.update(steps=8, batch_size=32, log_every=4, checkpoint_every=4)
    config.maps.update(batch_size=32)
    config.asif.update(anchors=256, k=32)
    config.distill.update(images_per_prompt=1, epochs=1, batch_size=64)
    config.batch_size = 64
  return config
