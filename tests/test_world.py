"""The demo world: deterministic rendering, the shapes_world tfds builder, reading it."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from zoomshot_jax import data
from zoomshot_jax import world
from zoomshot_jax.errors import UserError
from zoomshot_jax.world import builder as builder_lib
from zoomshot_jax.world import render

MICRO = world.SPLIT_SIZES["micro"]


@pytest.fixture(scope="module")
def micro_clean(tmp_path_factory):
  """data_dir with shapes_world/micro_clean prepared (once for the module)."""
  data_dir = str(tmp_path_factory.mktemp("world"))
  world.prepare("micro_clean", data_dir)
  return data_dir


def _read(data_dir, split, config="micro_clean"):
  b = tfds.builder(f"shapes_world/{config}", data_dir=data_dir)
  return list(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)))


def _digest(image):
  return hashlib.md5(np.ascontiguousarray(image).tobytes()).hexdigest()


def _words(label):
  return render.class_names()[label].split()


# ------------------------------------------------------------------ render


def test_example_is_a_function_of_its_arguments():
  args = dict(split_id=0, index=5, renderer="photo", image_size=48,
              two_objects_fraction=0.25, num_captions=3)
  a, b = render.example(seed=0, **args), render.example(seed=0, **args)
  assert a["image"].dtype == np.uint8 and a["image"].shape == (48, 48, 3)
  assert a["image"].tobytes() == b["image"].tobytes()
  assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items()
                                                         if k != "image"}
  assert render.example(seed=1, **args)["image"].tobytes() != a["image"].tobytes()


def test_photo_renders_the_same_scenes_differently():
  # Same (seed, split, index) -> same scene; "photo" draws extra random
  # numbers while rendering, so the captions (drawn afterwards) are other
  # phrasings of the same objects.
  different_captions = 0
  for i in range(20):
    clean, photo = (render.example(0, 0, i, r, 48, 0.25, 3) for r in ("clean", "photo"))
    assert clean["image"].tobytes() != photo["image"].tobytes()
    for key in ("label", "shape", "colour", "size", "background", "num_objects", "objects"):
      assert clean[key] == photo[key], key
    for ex in (clean, photo):
      for caption in ex["captions"]:
        for s, c in zip(ex["objects"]["shape"], ex["objects"]["colour"]):
          assert render.SHAPES[s] in caption.split() and render.COLOUR_NAMES[c] in caption.split()
    different_captions += clean["captions"] != photo["captions"]
  assert different_captions > 0


# ----------------------------------------------------------------- builder


def test_prepared_splits_are_consistent(micro_clean):
  some_two = False
  for split, n in MICRO.items():
    examples = _read(micro_clean, split)
    assert len(examples) == n
    for ex in examples:
      assert ex["image"].shape == (48, 48, 3) and ex["image"].dtype == np.uint8
      assert ex["label"] == ex["shape"] * len(render.COLOURS) + ex["colour"]
      objects = ex["objects"]
      assert ex["num_objects"] == len(objects["shape"]) == len(objects["colour"])
      assert (objects["shape"][0], objects["colour"][0], objects["size"][0]) == (
          ex["shape"], ex["colour"], ex["size"])
      assert len(ex["captions"]) == builder_lib.NUM_CAPTIONS
      captions = [c.decode().split() for c in ex["captions"]]
      if ex["num_objects"] == 1:
        # The label's words ("red", "circle") are in every caption.
        assert all(w in c for w in _words(ex["label"]) for c in captions)
      else:
        some_two = True
    if split == "test":
      assert all(ex["num_objects"] == 1 for ex in examples)
  assert some_two  # 25% of training images hold two objects


def test_prepared_data_is_what_the_renderer_draws(micro_clean):
  # The stored order is tfds' (a hash of the keys): compare as sets.
  stored = {_digest(ex["image"]): [c.decode() for c in ex["captions"]]
            for ex in _read(micro_clean, "test")}
  drawn = {_digest(ex["image"]): ex["captions"] for ex in
           (render.example(0, 3, i, "clean", 48, 0.0, 3) for i in range(MICRO["test"]))}
  assert stored == drawn


def test_preparing_twice_gives_identical_data(micro_clean, tmp_path):
  world.prepare("shapes_world/micro_clean", str(tmp_path))
  first, second = _read(micro_clean, "test"), _read(str(tmp_path), "test")
  assert [ex["image"].tobytes() for ex in first] == [ex["image"].tobytes() for ex in second]
  assert [list(ex["captions"]) for ex in first] == [list(ex["captions"]) for ex in second]


def test_a_test_only_world_is_the_full_worlds_test_split(micro_clean, tmp_path):
  b = world.prepare("micro_clean_testonly", str(tmp_path))
  assert set(b.info.splits) == {"test"}
  assert b.builder_config.splits == ("test",)
  digests = lambda d, c: sorted(_digest(ex["image"]) + str(ex["label"])
                                for ex in _read(d, "test", c))
  assert digests(str(tmp_path), "micro_clean_testonly") == digests(micro_clean, "micro_clean")


def test_prepare_reuses_prepared_data(micro_clean):
  path = tfds.builder("shapes_world/micro_clean", data_dir=micro_clean).data_dir

  def files():
    return sorted((f, os.stat(os.path.join(path, f)).st_mtime_ns) for f in os.listdir(path))

  before = files()
  assert world.prepare("micro_clean", micro_clean).is_prepared()
  assert files() == before


def test_worker_pool_gives_the_in_process_order(tmp_path, monkeypatch):
  b = world.ShapesWorld(config="micro_photo", data_dir=str(tmp_path))
  serial = list(b._generate_examples("map_train"))  # pylint: disable=protected-access
  monkeypatch.setattr(builder_lib, "_MIN_POOL_SIZE", 0)
  monkeypatch.setattr(builder_lib, "_CHUNK_SIZE", 16)
  pooled = list(b._generate_examples("map_train"))  # pylint: disable=protected-access
  assert [k for k, _ in pooled] == list(range(MICRO["map_train"]))
  assert [ex for _, ex in pooled] == [ex for _, ex in serial]


# ------------------------------------------------------------ config names


def test_config_names(tmp_path):
  assert world.config_name("clean") == "clean"
  assert world.config_name("photo", 3, micro=True) == "micro_photo_seed3"
  assert [c.name for c in world.ShapesWorld.BUILDER_CONFIGS] == [
      "clean", "photo", "micro_clean", "micro_photo"]
  b = tfds.builder("shapes_world/micro_photo_seed3", data_dir=str(tmp_path))
  cfg = b.builder_config
  assert isinstance(cfg, world.ShapesWorldConfig)
  assert (cfg.name, cfg.renderer, cfg.seed, cfg.scale) == ("micro_photo_seed3", "photo", 3,
                                                           "micro")
  assert b.data_path.parts[-3:] == ("shapes_world", "micro_photo_seed3", "1.0.0")
  # Seed 0 spelled out is the predefined config.
  assert world.ShapesWorld(config="clean_seed0", data_dir=str(tmp_path)).builder_config is (
      world.ShapesWorld.builder_configs["clean"])


@pytest.mark.parametrize("name, bad", [("shapes_world/sepia", "sepia"),
                                       ("shapes_world/micro_clean_seedx", "micro_clean_seedx"),
                                       ("shapes_world/micro_sepia_seed2", "sepia")])
def test_bad_config_names_are_user_errors(tmp_path, name, bad):
  with pytest.raises(UserError, match=bad) as e:
    tfds.builder(name, data_dir=str(tmp_path))
  assert "[micro_]{clean|photo}[_seed<N>]" in str(e.value)


# -------------------------------------------------------------- data layer


def test_data_source_reads_the_world(micro_clean):
  src = data.get_source("shapes_world/micro_clean", "test", micro_clean)
  assert src.num_classes == 64 and src.label_names == render.class_names()
  assert src.size() == MICRO["test"]
  ds, n = src.host_shard(0, 1)
  examples = list(ds.as_numpy_iterator())
  assert n == len(examples) == MICRO["test"]
  assert all(ex["image"].dtype == np.uint8 and ex["image"].shape == (48, 48, 3)
             for ex in examples)
  indices = np.array([0, 5, 6, 100, MICRO["test"] - 1])
  subset = list(src.subset(indices).host_shard(0, 1)[0].as_numpy_iterator())
  assert [(_digest(ex["image"]), ex["label"]) for ex in subset] == [
      (_digest(examples[i]["image"]), examples[i]["label"]) for i in indices]


def test_data_source_reads_a_world_built_on_request(tmp_path):
  # Once prepared, tfds serves a config that is not in BUILDER_CONFIGS from
  # its files (a ReadOnlyBuilder), not from our class: it must still work.
  data_dir = str(tmp_path)
  b = world.prepare("micro_photo_seed3", data_dir)
  assert isinstance(b, world.ShapesWorld) and b.builder_config.seed == 3
  assert type(tfds.builder("shapes_world/micro_photo_seed3", data_dir=data_dir)).__name__ == (
      "ReadOnlyBuilder")
  src = data.get_source("shapes_world/micro_photo_seed3", "test", data_dir)
  assert src.label_names == render.class_names()
  labels = sorted(int(ex["label"]) for ex in src.host_shard(0, 1)[0].as_numpy_iterator())
  assert labels == sorted(render.example(3, 3, i, "photo", 48, 0.0, 3)["label"]
                          for i in range(MICRO["test"]))
