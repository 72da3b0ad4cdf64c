"""Input sources and pipelines: exact host sharding, padding, errors."""

import hashlib
import os
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from zoomshot_jax import data
from zoomshot_jax.data import sources
from zoomshot_jax.encoders.preprocessing import PreprocessSpec
from zoomshot_jax.errors import UserError

SPEC = PreprocessSpec(resize=16, resize_mode="exact", crop=0)


class ZsTinyColors(tfds.core.GeneratorBasedBuilder):
  """A real, prepared tfds dataset: 23 train / 13 test images of 3 colours."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["dark_red", "green", "blue"]),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(23, 0), "test": self._generate_examples(13, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      h, w = int(rng.integers(10, 30)), int(rng.integers(10, 30))
      yield i, {"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
                "label": int(rng.integers(0, 3))}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  ZsTinyColors(data_dir=data_dir).download_and_prepare()
  return data_dir


def _fingerprints(ds):
  return [(hashlib.md5(ex["image"].tobytes()).hexdigest(), int(ex["label"]))
          for ex in ds.as_numpy_iterator()]


def test_contiguous_ranges_cover_each_index_once():
  for n in (0, 1, 7, 23, 100):
    for count in (1, 2, 3, 8):
      covered = []
      for i in range(count):
        start, end = sources.contiguous_range(n, i, count)
        covered += list(range(start, end))
      assert covered == list(range(n))


@pytest.mark.parametrize("count", [2, 3])
def test_tfds_host_shards_concatenate_to_single_host_order(tiny_tfds, count):
  src = data.tfds_source("zs_tiny_colors", "train", data_dir=tiny_tfds)
  assert src.num_classes == 3 and src.label_names == ["dark_red", "green", "blue"]
  whole, n = src.host_shard(0, 1)
  assert n == 23
  parts, sizes = [], []
  for i in range(count):
    ds, k = src.host_shard(i, count)
    got = _fingerprints(ds)
    assert len(got) == k
    parts += got
    sizes.append(k)
  assert parts == _fingerprints(whole)
  assert max(sizes) - min(sizes) <= 1


def test_folder_source_shards_labels_and_names(image_folder):
  src = data.folder_source("folder:" + image_folder)
  assert src.label_names == ["blue triangle", "green circle", "red square"]
  whole, n = src.host_shard(0, 1)
  assert n == 21
  labels = [int(ex["label"]) for ex in whole.as_numpy_iterator()]
  assert labels == [0] * 7 + [1] * 7 + [2] * 7
  parts = []
  for i in range(2):
    ds, _ = src.host_shard(i, 2)
    parts += _fingerprints(ds)
  assert parts == _fingerprints(whole)
  # Decoded images are the PNGs' pixels.
  first = next(whole.as_numpy_iterator())["image"]
  from PIL import Image
  path = os.path.join(image_folder, "blue_triangle", "0000.png")
  np.testing.assert_array_equal(first, np.asarray(Image.open(path).convert("RGB")))


def test_eval_batches_pad_and_mask_exactly(image_folder):
  src = data.folder_source(image_folder)
  ds, n, steps = data.eval_batches(src, {"image": SPEC}, local_batch_size=8)
  batches = list(ds.as_numpy_iterator())
  assert (n, steps, len(batches)) == (21, 3, 3)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 21 and not mask[21:].any()
  assert batches[0]["image"].shape == (8, 16, 16, 3) and batches[0]["image"].dtype == np.uint8
  # Hosts agree on more steps: whole padding batches follow.
  ds, _, steps = data.eval_batches(src, {"image": SPEC}, 8, agree_steps=lambda s: s + 2)
  batches = list(ds.as_numpy_iterator())
  assert steps == 5 and len(batches) == 5 and not batches[-1]["mask"].any()


def test_two_views_are_cut_from_the_same_image(image_folder):
  src = data.folder_source(image_folder)
  big = PreprocessSpec(resize=32, resize_mode="exact", crop=0)
  ds = data.train_batches(src, {"clip": SPEC, "vision": big}, 4, seed=0)
  b = next(ds.as_numpy_iterator())
  assert b["clip"].shape == (4, 16, 16, 3) and b["vision"].shape == (4, 32, 32, 3)
  # Downsizing the larger view gives (nearly) the smaller one: same source image.
  small = tf.image.resize(b["vision"], (16, 16), antialias=True).numpy()
  assert np.abs(small - b["clip"].astype(np.float32)).mean() < 12


def test_train_batches_are_a_seeded_permutation(image_folder):
  src = data.folder_source(image_folder)
  a = [x["label"].tolist() for x in data.train_batches(src, {"i": SPEC}, 3, seed=1).as_numpy_iterator()]
  b = [x["label"].tolist() for x in data.train_batches(src, {"i": SPEC}, 3, seed=1).as_numpy_iterator()]
  c = [x["label"].tolist() for x in data.train_batches(src, {"i": SPEC}, 3, seed=2).as_numpy_iterator()]
  assert a == b and a != c
  assert sorted(sum(a, [])) == [0] * 7 + [1] * 7 + [2] * 7


def test_mock_data_datasets_are_counted(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    src = data.tfds_source("cifar10", "test", data_dir=str(tmp_path))
    ds, n = src.host_shard(0, 1)
    assert n == 5 and src.num_classes == 10
    assert next(ds.as_numpy_iterator())["image"].shape[-1] == 3


def test_not_prepared_tfds_says_where_and_how(tmp_path):
  with pytest.raises(UserError, match=r"not prepared.*" + str(tmp_path) + r".*tfds build cifar10"):
    data.tfds_source("cifar10", "test", data_dir=str(tmp_path)).host_shard(0, 1)
  with pytest.raises(UserError, match=r"manual download.*downloads/manual"):
    data.tfds_source("imagenet2012", "validation", data_dir=str(tmp_path)).host_shard(0, 1)


def test_bad_names_and_splits(tmp_path, tiny_tfds):
  with pytest.raises(UserError, match="not a tfds dataset.*folder:<path>"):
    data.get_source("no_such_dataset_xyz", "test", str(tmp_path))
  with pytest.raises(UserError, match=r"split 'validation'.*available splits: \['test', 'train'\]"):
    data.tfds_source("zs_tiny_colors", "validation", data_dir=tiny_tfds).host_shard(0, 1)


def test_bad_folders(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    data.folder_source(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no class sub-directories"):
    data.folder_source(str(tmp_path / "empty"))
  (tmp_path / "noimg" / "cat").mkdir(parents=True)
  (tmp_path / "noimg" / "cat" / "notes.txt").write_text("x")
  with pytest.raises(UserError, match=r"noimg/cat.*has no images"):
    data.folder_source(str(tmp_path / "noimg"))
  (tmp_path / "bad" / "cat").mkdir(parents=True)
  (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png")
  with pytest.raises(UserError, match=r"broken\.png.*cannot be read"):
    data.folder_source(str(tmp_path / "bad"))
  # Without the up-front check, the failure surfaces as a UserError while iterating.
  src = data.folder_source(str(tmp_path / "bad"), verify=False)
  ds, _, _ = data.eval_batches(src, {"image": SPEC}, 1)
  with pytest.raises(UserError, match="could not be read or decoded"):
    list(data.as_numpy(ds, "dataset 'bad'"))


def test_pil_formats_and_greyscale(tmp_path):
  from PIL import Image
  (tmp_path / "a").mkdir()
  Image.fromarray(np.full((9, 11), 200, np.uint8), mode="L").save(tmp_path / "a" / "g.png")
  Image.fromarray(np.full((9, 11, 3), 90, np.uint8)).save(tmp_path / "a" / "t.tiff")
  src = data.folder_source(str(tmp_path))
  ds, n = src.host_shard()
  images = [ex["image"] for ex in ds.as_numpy_iterator()]
  assert n == 2 and all(im.shape == (9, 11, 3) for im in images)
  assert images[0].min() == 200 and images[1].max() == 90


def _batches(b, steps):
  return [{k: np.asarray(v) for k, v in b(s).items()} for s in range(steps)]


@pytest.mark.parametrize("independent", [False, True])
def test_images_held_in_memory_give_the_streamed_batches(image_folder, tmp_path, independent):
  """The held share replaces decoding, not the order: with augmentation, over
  several epochs, both views, every batch is the streamed one bit for bit;
  and the files are not read again (deleted, the held batches still come)."""
  from zoomshot_jax import sharding, training  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path / "images")
  shutil.copytree(image_folder, folder)
  mesh = sharding.make_mesh([("data", -1)])
  views = {"a": SPEC, "b": PreprocessSpec(resize=24, resize_mode="exact", crop=0)}

  def make(in_memory_bytes):
    return training.ImageBatches(data.folder_source(folder), views, 8, seed=3, mesh=mesh,
                                 independent=independent, augment=True, keep=("label",),
                                 in_memory_bytes=in_memory_bytes)

  streamed = make(0)
  held = make(2**20)
  assert streamed.steps_per_epoch == held.steps_per_epoch == 2
  want = _batches(streamed, 6)          # 3 epochs
  shutil.rmtree(folder)
  got = _batches(held, 6)
  for w, g in zip(want, got):
    assert w.keys() == g.keys()
    for k in w:
      np.testing.assert_array_equal(w[k], g[k], err_msg=k)
  assert not all(np.array_equal(want[0]["a"], w["a"]) for w in want[1:])  # augmented


def test_images_that_do_not_fit_or_differ_in_shape_are_streamed(image_folder, tiny_tfds):
  from zoomshot_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  src = data.folder_source(image_folder)          # 21 images of 48x40x3
  assert pipeline.in_memory(src, 0, 1, 21 * 48 * 40 * 3) is not None
  assert pipeline.in_memory(src, 0, 1, 21 * 48 * 40 * 3 - 1) is None
  assert pipeline.in_memory(src, 0, 1, 0) is None
  held = pipeline.in_memory(src, 1, 2, 2**20)     # host 1 of 2: its share only
  assert held.host_shard(1, 2)[1] == src.host_shard(1, 2)[1] == 11
  with pytest.raises(ValueError, match="host share"):
    held.host_shard(0, 2)
  sizes = data.tfds_source("zs_tiny_colors", "train", tiny_tfds)   # 10-30 px, mixed
  assert pipeline.in_memory(sizes, 0, 1, 2**30) is None


@pytest.mark.parametrize("value", [-1, -0.5, float("nan"), "1", True, None])
def test_a_memory_size_must_be_a_number_of_gb(value):
  from zoomshot_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match=r"config\.data\.in_memory_gb=.*expected a size in GB"):
    pipeline.memory_bytes(value, "data.in_memory_gb")
  assert pipeline.memory_bytes(0, "x") == 0 and pipeline.memory_bytes(1.5, "x") == 3 * 2**29


def test_an_unfinished_pipeline_is_closed_off_the_calling_thread():
  """The training thread hands the old epoch's iterator over and goes on; the
  teardown (here held until the test lets it go) finishes on its own thread."""
  from zoomshot_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  gate, closed = threading.Event(), threading.Event()

  def batches():
    try:
      yield 1
      yield 2
    finally:
      gate.wait(timeout=10)
      closed.set()

  it = batches()
  next(it)
  pipeline.close_later(it)
  assert not closed.is_set()            # close_later returned before the teardown ran
  gate.set()
  assert closed.wait(timeout=10)
  pipeline.close_later(None)            # nothing to close
