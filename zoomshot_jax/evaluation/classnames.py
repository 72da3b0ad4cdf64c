"""Class names and prompt templates per dataset, as data.

`classnames/<tfds name>.json` holds {"classnames", "templates", "source"} in
the tfds label order (CLIP's curated names where CLIP has them; see each
file's "source"). Other datasets fall back to their own label names: a
folder's directory names, or tfds label names when they are words.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import tensorflow as tf

from zoomshot_jax.errors import UserError

_DIR = os.path.join(os.path.dirname(__file__), "classnames")
# CLIP's basic template, for datasets without curated prompts.
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# The split the papers evaluate on, per dataset (eurosat has only "train").
DEFAULT_SPLITS = {
    "imagenet2012": "validation", "cifar10": "test", "cifar100": "test",
    "oxford_iiit_pet": "test", "oxford_flowers102": "test", "food101": "validation",
    "cars196": "test", "dtd": "test", "eurosat": "train", "caltech101": "test",
    "caltech_birds2011": "test", "sun397": "test",
}


@dataclasses.dataclass(frozen=True)
class Prompts:
  classnames: tuple[str, ...]
  templates: tuple[str, ...]
  source: str

  def texts(self) -> list[str]:
    """All K x J prompts, class-major: index = k * J + j."""
    return [t.format(c) for c in self.classnames for t in self.templates]


def known_datasets() -> list[str]:
  return sorted(f[:-5] for f in os.listdir(_DIR) if f.endswith(".json"))


@functools.lru_cache(maxsize=None)
def load_known(name: str) -> Prompts:
  """The curated class names and templates of a dataset of `known_datasets()`."""
  with open(os.path.join(_DIR, name + ".json"), encoding="utf-8") as f:
    d = json.load(f)
  return Prompts(tuple(d["classnames"]), tuple(d["templates"]), d["source"])


def read_list(path: str, what: str) -> tuple[str, ...]:
  """A JSON list of strings, or a text file with one entry per line."""
  if not tf.io.gfile.exists(path):
    raise UserError(f"{what} file {path!r} does not exist.")
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  if path.endswith(".json"):
    items = json.loads(text)
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
      raise UserError(f"{what} file {path!r} must hold a JSON list of strings.")
  else:
    items = [line.strip() for line in text.splitlines() if line.strip()]
  if not items:
    raise UserError(f"{what} file {path!r} is empty.")
  return tuple(items)


def _usable_label_names(names) -> bool:
  """Label names that are words: not numbers, nor WordNet ids like n01440764."""
  return bool(names) and not all(re.fullmatch(r"[\d_/.\-]*|n\d{8}", n) for n in names)


def get_prompts(dataset: str, num_classes: int, label_names=None,
                classnames_file: str = "", templates_file: str = "",
                templates: tuple[str, ...] = ()) -> Prompts:
  """Class names and templates for `dataset`, checked against its label count.

  Args:
    dataset: tfds name or "folder:<path>".
    num_classes: the number of labels the data has.
    label_names: the data's own label names (fallback).
    classnames_file / templates_file: overrides (JSON list or one per line);
      templates contain "{}" where the class name goes.
    templates: the templates themselves (over templates_file), e.g. a config's.
  """
  if dataset in known_datasets():
    prompts = load_known(dataset)
  elif _usable_label_names(label_names):
    names = tuple(re.sub(r"^/\w/", "", n).replace("_", " ").replace("/", " ")
                  for n in label_names)
    prompts = Prompts(names, DEFAULT_TEMPLATES, "the dataset's own label names")
  else:
    prompts = None
  if classnames_file:
    prompts = Prompts(read_list(classnames_file, "class names"),
                      prompts.templates if prompts else DEFAULT_TEMPLATES, classnames_file)
  if prompts is None:
    raise UserError(
        f"dataset {dataset!r} has no class names we know and its labels are not "
        "words; pass --config.classnames_file=<file with one name per line, in label "
        f"order>. Datasets with curated names: {known_datasets()}.")
  given, where = ((tuple(templates), "the config's templates") if templates else
                  (read_list(templates_file, "templates"), f"templates file {templates_file!r}")
                  if templates_file else ((), ""))
  if given:
    bad = [t for t in given if "{}" not in t]
    if bad:
      raise UserError(f"{where}: every template needs '{{}}' where the class name goes; "
                      f"these do not: {bad[:3]}.")
    prompts = dataclasses.replace(prompts, templates=given)
  if len(prompts.classnames) != num_classes:
    raise UserError(
        f"dataset {dataset!r} has {num_classes} classes but {len(prompts.classnames)} class "
        f"names were given ({prompts.source}); the list must have one name per label, "
        "in label order.")
  return prompts
