r"""ASIF: zero-shot classification from a unimodal image encoder, a unimodal text
encoder and image–caption anchor pairs, with no training (METHODS.md §3).

  python -m zoomshot_jax.main --config=configs/asif.py:paper --workdir=/tmp/asif \
      --config.anchors.source='tfrecord:/data/cc12m/*.tfrecord' \
      --config.data_dir=/data/tensorflow_datasets

The argument is comma-separated words, at most one of each kind:
  setting:
    paper      (default) the paper's setting: the first 1.6M CC12M pairs (from
               img2dataset TFRecords: "jpg" and "txt"), a supervised ViT-B/16
               (ImageNet-21k), a sentence encoder, k = 800, p = 8, ImageNet /
               CIFAR-100 / Pets with the reference implementation's templates
    coco       the same with anchors from tfds coco_captions (train, the first
               caption per image)
    tiny       small steps for tests and laptops (the anchors and the encoders
               must be given)
  text:
    clip_text  CLIP ViT-B/32's text tower as the text encoder (for comparison)
Any field can be overridden on the command line; a misspelt field is an error.
"""

import ml_collections

from zoomshot_jax.configs import common

# tiny is a setting, not a size on top of one: it leaves the anchors to the
# command line, so `coco,tiny` would quietly drop coco.
KINDS = {"setting": ("paper", "coco", "tiny"), "text": ("clip_text",)}


def get_config(arg=None):
  words = common.parse_words(arg, KINDS, "configs/asif.py")
  setting = words.get("setting", "paper")
  config = ml_collections.ConfigDict()
  config.program = "asif"
  config.stage = "embed-anchors,evaluate"   # one or both, run in this order
  config.anchors_dir = ""                    # the anchor store ("" = <workdir>/anchors)

  # Anchor pairs: tsv:<file> | jsonl:<file> | tfrecord:<glob> | tfds:<name>.
  config.anchors = ml_collections.ConfigDict()
  # No default location: the paper's anchors are the user's CC12M TFRecords,
  # e.g. --config.anchors.source='tfrecord:/data/cc12m/*.tfrecord'.
  config.anchors.source = ""
  config.anchors.image_key = "jpg"           # TSV column / JSON key / TFRecord feature
  config.anchors.caption_key = "txt"
  config.anchors.split = "train"             # tfds sources only
  config.anchors.max_anchors = 1_600_000     # the first pairs only (0 = all)
  config.anchors.shard_size = 50_000         # pairs per shard file (the unit of resuming)
  config.anchors.append = False              # add this source after the store's anchors
  config.anchors.verify_files = True         # check every image file of tsv/jsonl exists first
  config.anchors.batch_size = 256            # images per host per step when embedding
  config.anchors.text_batch_size = 256       # captions per step

  # The paper's image encoder is supervised; ours: ViT-B/16 trained on ImageNet-21k.
  config.image_encoder = ml_collections.ConfigDict()
  config.image_encoder.name = "vit"          # encoders.VISION_ENCODERS
  config.image_encoder.checkpoint = "google/vit-base-patch16-224-in21k"
  config.image_encoder.pooling = "default"
  config.text_encoder = ml_collections.ConfigDict()
  config.text_encoder.name = "bert"          # encoders.TEXT_ENCODERS
  config.text_encoder.checkpoint = "sentence-transformers/all-MiniLM-L6-v2"
  config.text_encoder.pooling = "mean"
  config.text_encoder.max_length = 128
  config.dtype = "float32"
  config.random_init = False                 # random weights (smoke tests, benchmarks)

  # The method (METHODS.md §3) and how its search is laid out.
  config.asif = ml_collections.ConfigDict({
      "k": 800,                  # anchors kept per relative representation
      "p": 8,                    # power of the kept similarities
      "rule": "prompt_max",      # argmax over prompts (reference) | template_mean
      "query_chunk": 1024,       # query rows per search step (multiple of devices)
      "anchor_block": 0,         # anchors per similarity dot (0: 1024 on CPU, 4096 elsewhere)
      "top_k": "auto",           # host (CPU default: dots and top-k on the host) | xla
      "scoring": "auto",         # the sparse join: host (SciPy, CPU default) | xla
      "anchor_chunk": 0,         # 0: all anchors on the devices; N: stream N at a time
      "reuse_reps": True,        # start from the workdir's cached rows (anchors added: update)
  })

  config.data_dir = ""                       # tfds data_dir (eval datasets and tfds anchors)
  config.tfds_download = False
  config.verify_images = True
  # Stage evaluate: the evaluators (zoomshot_jax/evaluation/registry.py).
  config.evals = ml_collections.ConfigDict({"asif": {
      "type": "asif_classification",
      "datasets": "imagenet2012,cifar100,oxford_iiit_pet",
      "split": "default",        # "default": the papers' split per dataset
      "classnames_file": "",     # one dataset only
      "templates_file": "",
      "templates": "reference",  # noranta4/ASIF's templates where it has its own | default
      "batch_size": 256,         # eval images per step (global)
      "text_batch_size": 256,    # prompts per step
      "save_predictions": False,
      "explain": 0,              # explain the first N predictions per dataset
      "data_dir": config.get_ref("data_dir"), "tfds_download": config.get_ref("tfds_download"),
      "verify_images": config.get_ref("verify_images"),
  }})
  # jax's persistent compilation cache: "" = $ZOOMSHOT_CACHE/jax or
  # ~/.cache/zoomshot_jax/jax; a directory or gs:// path; "none" = off.
  config.compilation_cache = ""
  config.mesh = [("data", -1)]

  if setting == "coco":
    config.anchors.source = "tfds:coco_captions"
    config.anchors.max_anchors = 0
  if words.get("text") == "clip_text":
    config.text_encoder.name = "clip"
    config.text_encoder.checkpoint = common.CLIPS["b32"]
    config.text_encoder.pooling = "default"
  if setting == "tiny":
    config.anchors.image_key, config.anchors.caption_key = "image", "caption"
    config.anchors.max_anchors = 0
    config.anchors.shard_size = 16
    config.anchors.batch_size = 8
    config.anchors.text_batch_size = 16
    config.asif.update(k=8, query_chunk=16, anchor_block=8)
    config.evals.asif.update(batch_size=8, text_batch_size=16, templates="default")
  return config
