r"""Zero-shot feature distillation (METHODS.md §4): a small student image
encoder learns CLIP's image features and then classifies zero-shot with
CLIP's text tower.

  python -m zoomshot_jax.main --config=configs/distill.py:vit_tiny,stage2,pets \
      --workdir=/tmp/distill_pets --config.data.dataset=folder:/data/synthetic/pets/images \
      --config.student.checkpoint=/tmp/distill_stage1/export/student

The argument is comma-separated words, at most one of each kind (defaults first):
  student: vit_tiny | vit_small | resnet18 | resnet50 | regnety_400mf |
           world_vit | world_resnet            (models/student.py's presets)
  stage:   stage2 (domain-specific synthetic images, 96 epochs) |
           stage1 (domain-agnostic images, 1 epoch)
  dataset: pets | food | cars | flowers | aircraft | dtd (the evaluation set
           and its single template, as the reference evaluates)
The defaults are the reference's recipe: AdamW lr 5e-4, betas (0.9, 0.98),
eps 1e-6, no weight decay, constant learning rate, batch 256, `l2` loss
(README, "Zero-shot feature distillation", says which fields are ours).
"""

import ml_collections

from zoomshot_jax.configs import common

STUDENTS = ("vit_tiny", "vit_small", "resnet18", "resnet50", "regnety_400mf", "world_vit",
            "world_resnet")   # models/student.py's PRESETS (not imported: a config stays light)
STAGES = {"stage2": 96, "stage1": 1}      # epochs
# The reference's evaluation datasets (tfds names) and single templates.
DATASETS = {
    "pets": ("oxford_iiit_pet", "a photo of a {}, a type of pet."),
    "food": ("food101", "a photo of a {}, a type of food."),
    "cars": ("cars196", "a photo of a {}, a type of car."),
    "flowers": ("oxford_flowers102", "a photo of a {}, a type of flower."),
    # No tfds dataset: --config.evals.zeroshot.datasets=folder:<test images>.
    "aircraft": ("", "a photo of a {}, a type of aircraft."),
    "dtd": ("dtd", "a photo of a {} texture."),
}
KINDS = {"student": STUDENTS, "stage": STAGES, "dataset": DATASETS}
TEACHER = "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"


def get_config(arg=None):
  words = common.parse_words(arg, KINDS, "configs/distill.py")
  dataset, template = DATASETS[words.get("dataset", "pets")]

  config = ml_collections.ConfigDict()
  config.program = "distill"
  config.seed = 0

  # The teacher: a CLIP (image and text towers), frozen; hub id or directory.
  config.clip = TEACHER
  config.dtype = "float32"            # the teacher's compute ("bfloat16" on TPU/GPU)

  # The student: a preset trained from scratch, or a checkpoint (an HF vision
  # model of `arch`, or an earlier stage's export/student, head included).
  config.student = ml_collections.ConfigDict({
      "preset": words.get("student", "vit_tiny"),
      "overrides": {},                # HF config fields over the preset's
      "checkpoint": "",
      "arch": "",                     # with a plain HF checkpoint: vit | resnet | regnet
      "pooling": "default",           # global average pooling (vit: mean of patch tokens)
  })

  # Training images: tfds name or folder:<path> (<class>/<file> layout, e.g.
  # a text-to-image model's output, images/<class>/<i>.png).
  config.data_dir = ""
  config.tfds_download = False
  config.verify_images = True
  config.data = ml_collections.ConfigDict({
      "dataset": "",                  # required
      "split": "train",
      # The class names the images were generated for (the contrastive term's
      # prompts; a folder's directories must match them): "" = the dataset's
      # own (a folder: its directory names, "_" read as a space).
      "classnames_file": "",
      "templates": (template,),       # the contrastive term's prompt per class
      # ... or each image's own caption (the reference's): a directory of
      # <class>/<stem>.txt beside a folder of <class>/<stem>.<ext> images,
      # e.g. a generator's captions/ next to its images/. "" = class prompts.
      "captions_dir": "",
      # This host's decoded training images are held in memory when they fit
      # (GB; 0 = read and decode them every epoch): a folder of generated
      # images is small, and decoding it again each epoch stalls the step.
      "in_memory_gb": 1.0,
  })
  config.features = ml_collections.ConfigDict({
      # RandomResizedCrop + flip in tf.data, the same crop for teacher and
      # student; the teacher runs in the step on that batch.
      "augment": True,
  })

  # The method (METHODS.md §4).
  config.distill = ml_collections.ConfigDict({
      "loss": "l2",                   # or "i2i" (InfoNCE against teacher image features)
      "alpha": 0.0,                   # total = (1 - alpha) * loss + alpha * contrastive
      "log_temperature": 0.0,         # logits * exp(-log_temperature): tau = 1
      "learn_temperature": False,
  })
  config.train = ml_collections.ConfigDict({
      "epochs": STAGES[words.get("stage", "stage2")], "batch_size": 256,
      "log_every": 100, "checkpoint_every": 1000, "keep_checkpoints": 2,
  })
  config.optimizer = common.optimizer(learning_rate=5e-4, schedule="constant", weight_decay=0.0,
                                      decay_params="matrices", b2=0.98, eps=1e-6)

  # Zero-shot evaluation of the exported student with the teacher's text
  # tower, and (reference_clip) of the teacher itself.
  config.evals = ml_collections.ConfigDict({"zeroshot": common.zeroshot_eval(
      dataset, config, templates=(template,))})
  config.reference_clip = True
  config.compilation_cache = ""
  config.mesh = [("data", -1)]
  return config
