"""What the configs share: the variant-word parser, the model and dataset
tables, and how one config module gets another.

A config reaches this module, and any other config, through the package
`zoomshot_jax.configs` (setup.py installs configs/ under that name; `pip
install -e .` maps it onto this folder):

  from zoomshot_jax.configs import common

That one import works both when ml_collections' config_flags loads
`--config=configs/zoomshot.py` as a bare file (no package, so a relative
import cannot work) and when the demo or a test imports the package, and it
still works for a copy of a config kept outside configs/.
"""

import importlib

import ml_collections

# CLIP word -> hub id.
CLIPS = {
    "b32": "openai/clip-vit-base-patch32",
    "b16": "openai/clip-vit-base-patch16",
    "l14": "openai/clip-vit-large-patch14",
}

# Vision encoder word -> (registry name, checkpoint, pooling). Poolings are
# ours: the Zoom-shot paper does not say which token it maps; CLS for the
# ViTs, the pooled map for CNNs.
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

# Dataset group word -> comma-separated tfds names. "all" is the Zoom-shot
# paper's twelve evaluation datasets.
DATASET_GROUPS = {
    "imagenet": "imagenet2012",
    "cifar": "cifar10,cifar100",
    "fine_grained": "oxford_iiit_pet,oxford_flowers102,food101,cars196,dtd,eurosat,"
                    "caltech101,caltech_birds2011,sun397",
}
DATASET_GROUPS["all"] = ",".join(DATASET_GROUPS.values())


def parse_words(arg, kinds, config_name):
  """The variant words of `--config=<file>:<arg>`, e.g. arg "b16,fine_grained".

  Args:
    arg: comma-separated words, or None / "" for none.
    kinds: {kind: words}, words a {word: value} table (or any collection of
      words), in the order the error message lists them. A word of several
      kinds takes all of them (zoomshot's `toy` is a vision encoder, a CLIP
      and a regime at once), so that no word can quietly undo another.
    config_name: the config's file as the user names it, for the message,
      e.g. "configs/zoomshot.py".

  Returns:
    {kind: word} for the kinds given a word; a kind left out is absent (the
    config's default applies).

  Raises:
    ValueError: a word that is unknown, repeated, or a second word of one
      kind. One line, naming the word and every kind's choices, as the binary
      prints it (zoomshot_jax/main.py).
  """
  chosen = {}
  for word in (w.strip() for w in (arg or "").split(",")):
    if not word:
      continue
    its_kinds = [k for k, words in kinds.items() if word in words]
    taken = [k for k in its_kinds if k in chosen]
    if not its_kinds:
      problem = "is not a variant word"
    elif taken and chosen[taken[0]] == word:
      problem = "is repeated"
    elif taken:
      problem = f"conflicts with {chosen[taken[0]]!r} (both are {taken[0]} words)"
    else:
      chosen.update(dict.fromkeys(its_kinds, word))
      continue
    choices = "; ".join(f"{k}: {' | '.join(words)}" for k, words in kinds.items())
    raise ValueError(f"{config_name}: {word!r} {problem}; choose at most one of each "
                     f"kind: {choices}.")
  return chosen


def optimizer(**overrides):
  """A complete `config.optimizer` group (training/optim.py reads it): AdamW
  defaults, then `overrides`. The same fields in every config, so one factory
  serves every method."""
  fields = {"name": "adamw", "learning_rate": 1e-3, "schedule": "cosine",
            "warmup_steps": 0, "weight_decay": 1e-4,
            "decay_params": "all",   # or "matrices": only >= 2-D params decay
            "momentum": 0.9, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise KeyError(f"optimizer fields {unknown} do not exist; fields: {sorted(fields)}")
  return ml_collections.ConfigDict({**fields, **overrides})


def zeroshot_eval(datasets, config=None, **overrides):
  """A `config.evals.<name>` group of the zero-shot classification evaluator
  (zoomshot_jax/evaluation/registry.py).

  Args:
    datasets: comma-separated tfds names and/or folder:<path>.
    config: the enclosing config; its data_dir, tfds_download and
      verify_images are referenced (not copied), so `--config.data_dir=...`
      reaches the evaluator too.
  """
  group = ml_collections.ConfigDict({
      "type": "zeroshot_classification",
      "datasets": datasets,
      "split": "default",         # tfds split for all datasets; "default": per dataset
      "batch_size": 256,          # global; a multiple of the number of devices
      "text_batch_size": 256,     # prompts per step when building the classifier
      "cache_dir": "",            # classifier cache ("" = $ZOOMSHOT_CACHE or ~/.cache/zoomshot_jax; "none" = off)
      "save_predictions": False,  # <workdir>/predictions/<dataset>.npz: labels, logits
      "classnames_file": "",      # override class names (one dataset only)
      "templates_file": "",       # override prompt templates
      "templates": (),            # ... or give them here (a tuple: one template per dataset)
      "data_dir": "", "tfds_download": False, "verify_images": True,
  })
  if config is not None:
    for field in ("data_dir", "tfds_download", "verify_images"):
      group[field] = config.get_ref(field)
  group.update(overrides)
  return group


def load(name):
  """The module of configs/<name>.py, e.g. load("zoomshot").get_config("b16").

  For a caller holding the name as a string; it is the module that
  `from zoomshot_jax.configs import <name>` gives, so every caller (another
  config, the demo, a test) shares one copy of each config's tables.
  """
  return importlib.import_module(f"zoomshot_jax.configs.{name}")
