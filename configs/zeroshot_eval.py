r"""Zero-shot evaluation of a CLIP checkpoint on tfds datasets and image folders.

  python -m zoomshot_jax.main --config=configs/zeroshot_eval.py:b16,fine_grained \
      --workdir=/tmp/zs_b16 --config.batch_size=512

The argument is comma-separated words: a CLIP (b32 | b16 | l14) and a dataset
group (imagenet | cifar | fine_grained | all). Any field can be overridden on
the command line; a misspelt field is an error.
"""

import ml_collections

CLIPS = {
    "b32": "openai/clip-vit-base-patch32",
    "b16": "openai/clip-vit-base-patch16",
    "l14": "openai/clip-vit-large-patch14",
}
DATASET_GROUPS = {
    "imagenet": "imagenet2012",
    "cifar": "cifar10,cifar100",
    "fine_grained": "oxford_iiit_pet,oxford_flowers102,food101,cars196,dtd,eurosat,"
                    "caltech101,caltech_birds2011,sun397",
}
DATASET_GROUPS["all"] = ",".join(DATASET_GROUPS.values())


def get_config(arg=None):
  words = [w for w in (arg or "").split(",") if w]
  unknown = [w for w in words if w not in CLIPS and w not in DATASET_GROUPS]
  if unknown:
    raise ValueError(f"configs/zeroshot_eval.py: unknown variant words {unknown}; "
                     f"use CLIPs {sorted(CLIPS)} and dataset groups {sorted(DATASET_GROUPS)}.")
  config = ml_collections.ConfigDict()
  config.program = "zeroshot_eval"
  # A hub id or a directory written by save_pretrained (weights + tokenizer).
  config.clip = next((CLIPS[w] for w in words if w in CLIPS), CLIPS["b32"])
  config.random_init = False      # random weights of that config (smoke tests, benchmarks)
  config.dtype = "float32"        # or "bfloat16" for parameters and compute
  # Comma-separated tfds names and/or folder:<path> datasets.
  config.datasets = next((DATASET_GROUPS[w] for w in words if w in DATASET_GROUPS),
                         DATASET_GROUPS["imagenet"])
  config.split = "default"        # tfds split for all datasets; "default": per dataset
  config.data_dir = ""            # tfds data_dir ("" = tfds' default, ~/tensorflow_datasets)
  config.tfds_download = False    # let tfds download and prepare missing datasets
  config.verify_images = True     # check every folder: file is an image (headers) first
  config.classnames_file = ""     # override class names (one dataset only)
  config.templates_file = ""      # override prompt templates
  config.batch_size = 256         # global; a multiple of the number of devices
  config.text_batch_size = 256    # prompts per step when building the classifier
  config.cache_dir = ""           # classifier cache ("" = $ZOOMSHOT_CACHE or ~/.cache/zoomshot_jax; "none" = off)
  config.save_predictions = False # workdir/predictions/<dataset>.npz with labels and logits
  config.mesh = [("data", -1)]
  return config
