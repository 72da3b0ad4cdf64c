r"""Zero-shot evaluation of a CLIP checkpoint on tfds datasets and image folders.

  python -m zoomshot_jax.main --config=configs/zeroshot_eval.py:b16,fine_grained \
      --workdir=/tmp/zs_b16 --config.evals.zeroshot.batch_size=512

The argument is comma-separated words, at most one of each kind (defaults
first): a CLIP (b32 | b16 | l14) and a dataset group (imagenet | cifar |
fine_grained | all). Any field can be overridden on the command line; a
misspelt field is an error. `config.evals` holds the evaluators (by
`type`, zoomshot_jax/evaluation/registry.py); more can be added.
"""

import ml_collections

from zoomshot_jax.configs import common

KINDS = {"clip": common.CLIPS, "datasets": common.DATASET_GROUPS}


def get_config(arg=None):
  words = common.parse_words(arg, KINDS, "configs/zeroshot_eval.py")
  config = ml_collections.ConfigDict()
  config.program = "zeroshot_eval"
  # A hub id or a directory written by save_pretrained (weights + tokenizer).
  config.clip = common.CLIPS[words.get("clip", "b32")]
  config.random_init = False      # random weights of that config (smoke tests, benchmarks)
  config.dtype = "float32"        # or "bfloat16" for parameters and compute
  config.data_dir = ""            # tfds data_dir ("" = tfds' default, ~/tensorflow_datasets)
  config.tfds_download = False    # let tfds download and prepare missing datasets
  config.verify_images = True     # check every folder: file is an image (headers) first
  config.evals = ml_collections.ConfigDict({"zeroshot": common.zeroshot_eval(
      common.DATASET_GROUPS[words.get("datasets", "imagenet")], config)})
  # jax's persistent compilation cache: "" = $ZOOMSHOT_CACHE/jax or
  # ~/.cache/zoomshot_jax/jax; a directory or gs:// path; "none" = off.
  config.compilation_cache = ""
  config.mesh = [("data", -1)]
  return config
