"""`shapes_world`: the demo world as a tfds dataset, generated on the machine.

Configs are named `[micro_]{renderer}[_seed{N}]`: "clean", "photo",
"micro_clean", "photo_seed3", ... (see `ShapesWorld`). `prepare(name,
data_dir)` writes one into `data_dir` (once; tfds caches it there) and returns
the builder; afterwards the usual readers find it, e.g.
`zoomshot_jax.data.get_source("shapes_world/micro_clean", "test", data_dir)`.
`tfds.builder("shapes_world/...")` knows the builder once `zoomshot_jax.world`
is imported (that registers it); prepared data is readable even without that,
from its files, and then as a tfds ReadOnlyBuilder whose config is a plain
BuilderConfig: use `prepare()` to get a ShapesWorld with its ShapesWorldConfig.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import multiprocessing
import os
import re
import sys
import time
import warnings

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from zoomshot_jax import console
from zoomshot_jax.errors import UserError
from zoomshot_jax.world import render

NAME = "shapes_world"
IMAGE_SIZE = 48
NUM_CAPTIONS = 3
SPLITS = ("clip_train", "vision_train", "map_train", "test")
SPLIT_SIZES = {
    "full": {"clip_train": 40000, "vision_train": 20000, "map_train": 10000, "test": 4096},
    "micro": {"clip_train": 384, "vision_train": 256, "map_train": 256, "test": 192},
}
# `split_id` of render.example: each split draws its own scenes.
_SPLIT_IDS = {"clip_train": 0, "vision_train": 1, "map_train": 2, "test": 3}
# Test images hold one object, so that the 64-way label is unambiguous there.
_TWO_OBJECTS_FRACTION = {"clip_train": 0.25, "vision_train": 0.25, "map_train": 0.25,
                         "test": 0.0}
# Splits smaller than this are rendered in-process: a pool would save less
# than a second there.
_MIN_POOL_SIZE = 2000
_CHUNK_SIZE = 256

_NAME_RE = re.compile(
    r"(?P<micro>micro_)?(?P<renderer>[a-z]+)(?:_seed(?P<seed>\d+))?(?P<test>_testonly)?")
_NAME_PATTERN = "[micro_]{" + "|".join(render.RENDERERS) + "}[_seed<N>][_testonly]"


@dataclasses.dataclass
class ShapesWorldConfig(tfds.core.BuilderConfig):
  """One world: a renderer, a seed and a scale (split sizes, SPLIT_SIZES);
  splits: the ones it generates ("_testonly" worlds: the test split alone,
  the same examples as the full world's)."""

  renderer: str = "clean"
  seed: int = 0
  scale: str = "full"
  image_size: int = IMAGE_SIZE
  splits: tuple[str, ...] = SPLITS


def config_name(renderer: str, seed: int = 0, micro: bool = False,
                test_only: bool = False) -> str:
  """The config name of a world, e.g. ("photo", 3, True) -> "micro_photo_seed3"."""
  return (("micro_" if micro else "") + renderer + (f"_seed{seed}" if seed else "")
          + ("_testonly" if test_only else ""))


def _make_config(renderer: str, seed: int = 0, micro: bool = False,
                 test_only: bool = False) -> ShapesWorldConfig:
  scale = "micro" if micro else "full"
  splits = ("test",) if test_only else SPLITS
  sizes = ", ".join(f"{k} {SPLIT_SIZES[scale][k]}" for k in splits)
  return ShapesWorldConfig(
      name=config_name(renderer, seed, micro, test_only),
      description=f"{renderer} renderer, seed {seed}, {scale} scale ({sizes}).",
      renderer=renderer, seed=seed, scale=scale, splits=splits)


def parse_config_name(name: str) -> ShapesWorldConfig:
  """`[micro_]{renderer}[_seed<N>]` -> its config; a UserError otherwise."""
  m = _NAME_RE.fullmatch(name)
  if not m:
    raise UserError(f"shapes_world config {name!r} is not a valid name: expected "
                    f"{_NAME_PATTERN}, e.g. 'photo', 'micro_clean' or 'photo_seed3'.")
  if m["renderer"] not in render.RENDERERS:
    raise UserError(f"shapes_world config {name!r}: unknown renderer {m['renderer']!r}; "
                    f"expected {_NAME_PATTERN} with a renderer in {render.RENDERERS}.")
  return _make_config(m["renderer"], int(m["seed"] or 0), bool(m["micro"]), bool(m["test"]))


def _num_cpus() -> int:
  """The cores this process may use: a CPU set may allow fewer than the machine's."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def _render_encoded(args: tuple) -> dict:
  """render.example with the image PNG-encoded (a pool task: module-level).

  Encoding here rather than in tfds keeps the writing process, which competes
  with the workers for the cores, light; PIL is also faster than tfds' TF
  encoder. Pixels are the same either way (PNG is lossless).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  example = render.example(*args)
  buf = io.BytesIO()
  Image.fromarray(example["image"]).save(buf, format="png")
  example["image"] = buf.getvalue()
  return example


class ShapesWorld(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes of 8 kinds in 8 colours: the zero-download demo world.

  Each image shows one object (sometimes two, in training splits) of a shape
  in {circle, square, triangle, star, cross, heart, crescent, ring} and a
  colour in {red, orange, yellow, green, cyan, blue, purple, pink}, small or
  large, rotated, on a dark or light background (see world/render.py). The
  label is the 64-way shape x colour class of the first object,
  label = shape * 8 + colour, named e.g. "red circle".

  Renderers: "clean" draws flat colours; "photo" draws the same kind of scene
  with texture, shading, blur and noise (a domain shift). Every example is a
  pure function of (config seed, split, index), so a config is the same data
  on any machine, with any number of worker processes; a clean and a photo
  world of the same seed hold the same scenes (labels, objects), drawn
  differently, and other phrasings of their captions. Records are stored in
  tfds' usual order (a hash of the index), not in index order.

  Splits (sizes in SPLIT_SIZES, "full" or "micro" scale):
    clip_train    image-caption pairs for training a tiny CLIP;
    vision_train  images (labels unused) for training a tiny vision encoder;
    map_train     images for fitting the vision -> CLIP mapping;
    test          64-way classification; one object per image.
  Training splits have a second object in 25% of images. Every split stores 3
  captions per image, but only clip_train is meant to be used with text; the
  other splits' captions are for inspection only.

  Config names: [micro_]{clean|photo}[_seed<N>][_testonly], e.g. "photo",
  "micro_clean", "photo_seed3", "photo_testonly" (the test split alone:
  an evaluation-only world, 18x cheaper to generate); the four full worlds
  with seed 0 are predefined and any other is built on request.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [_make_config(r, 0, micro) for micro in (False, True)
                     for r in render.RENDERERS]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds' own code_path imports `importlib_resources`, a package tfds does
    # not declare (nor does this project's setup.py): preparing would fail
    # with ModuleNotFoundError where it is not installed. The answer is just
    # this file.
    return epath.Path(__file__)

  def _create_builder_config(self, builder_config, version):
    # Names like "photo_seed3" are parsed into a config rather than looked up.
    # This is where tfds resolves `config=` strings; converting here rather
    # than in __init__ keeps the string in the builder's pickled state, and
    # needs no copy of __init__'s keyword-only signature. (tfds.builder passes
    # a version separately; a ":version" suffix here is left to tfds.)
    if isinstance(builder_config, str):
      name = builder_config.split(":")[0]
      if name not in self.builder_configs:
        config = parse_config_name(name)
        # "clean_seed0" is "clean": use the predefined config.
        if config.name in self.builder_configs:
          return super()._create_builder_config(config.name, version)
        return config  # (super() would warn about a "custom configuration")
    return super()._create_builder_config(builder_config, version)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    label = lambda names: tfds.features.ClassLabel(names=list(names))
    # DatasetInfo itself, not dataset_info_from_configs: that one would take
    # the description from any README.md next to this module.
    return tfds.core.DatasetInfo(
        builder=self,
        description=inspect.cleandoc(self.__doc__),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
            "label": label(render.class_names()),
            "shape": label(render.SHAPES),
            "colour": label(render.COLOUR_NAMES),
            "size": label(render.SIZES),
            "background": label(render.BACKGROUNDS),
            "num_objects": tfds.features.Scalar(np.int32),
            "objects": tfds.features.Sequence({
                "shape": label(render.SHAPES),
                "colour": label(render.COLOUR_NAMES),
                "size": label(render.SIZES),
            }),
            "captions": tfds.features.Sequence(tfds.features.Text()),
        }),
        supervised_keys=("image", "label"),
        citation="",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in self.builder_config.splits}

  def _generate_examples(self, split: str):
    cfg = self.builder_config
    n = SPLIT_SIZES[cfg.scale][split]
    tasks = ((cfg.seed, _SPLIT_IDS[split], i, cfg.renderer, cfg.image_size,
              _TWO_OBJECTS_FRACTION[split], NUM_CAPTIONS) for i in range(n))
    if n < _MIN_POOL_SIZE:
      yield from enumerate(map(_render_encoded, tasks))
      return
    # Forked workers start at once and, unlike spawned ones, do not re-run
    # the caller's main module (a script calling prepare() at top level with
    # no `if __name__ == "__main__"` guard would respawn workers forever).
    # Forking a process that runs TensorFlow or JAX threads is safe here: the
    # workers only run NumPy and PIL, never those libraries, so JAX's at-fork
    # deadlock warning does not apply. Elsewhere (macOS, Windows) we spawn.
    # imap keeps the order, so the output does not depend on the process count.
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    start, next_log = time.time(), 1
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                              category=RuntimeWarning)
      pool = ctx.Pool(_num_cpus())
    with pool:
      for i, example in enumerate(pool.imap(_render_encoded, tasks, chunksize=_CHUNK_SIZE)):
        yield i, example
        if (i + 1) * 10 >= next_log * n:  # every 10%
          elapsed = time.time() - start
          console.progress(f"shapes_world/{cfg.name} {split}", i + 1, n,
                           elapsed * (n / (i + 1) - 1))
          next_log += 1


def _strip_name(name: str) -> str:
  prefix = NAME + "/"
  return name[len(prefix):] if name.startswith(prefix) else name


# pylint: disable-next=redefined-outer-name
def prepare(config_name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of a world, generated into `data_dir` unless already there.

  Args:
    config_name: "micro_clean", "photo_seed3", ... or "shapes_world/<config>".
    data_dir: the tfds data directory.
  """
  builder = ShapesWorld(config=_strip_name(config_name), data_dir=data_dir)
  if builder.is_prepared():
    logging.info("shapes_world/%s is prepared in %s.", builder.builder_config.name,
                 builder.data_dir)
    return builder
  start = time.time()
  logging.info("Generating shapes_world/%s into %s (%s).", builder.builder_config.name,
               builder.data_dir, builder.builder_config.description)
  builder.download_and_prepare()
  logging.info("Generated shapes_world/%s in %.1f s.", builder.builder_config.name,
               time.time() - start)
  return builder
