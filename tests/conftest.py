"""Shared fixtures. Tests see 8 fake CPU devices, as on an 8-chip host.

The flag must be set before jax is imported anywhere in the session.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["ZOOMSHOT_CACHE"] = os.environ.get("ZOOMSHOT_TEST_CACHE", "/tmp/zoomshot_test_cache")

import pytest  # noqa: E402

from zoomshot_jax.encoders import testing  # noqa: E402
from zoomshot_jax.tools import toy_assets  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
  """A random tiny CLIP (weights, tokenizer, preprocessor config) on disk."""
  return testing.save_tiny_clip(str(tmp_path_factory.mktemp("clip")), seed=0)


@pytest.fixture(scope="session")
def tiny_vision_dirs(tmp_path_factory):
  """{name: directory} of random tiny vision encoders of every architecture."""
  root = tmp_path_factory.mktemp("vision")
  return {name: testing.save_tiny_vision(name, str(root / name), seed=1)
          for name in ("vit", "dinov2", "beit", "resnet", "regnet")}


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
  """folder: dataset with 3 classes x 7 images (21: uneven for most batch sizes)."""
  root = tmp_path_factory.mktemp("images")
  return toy_assets.write_image_folder(str(root), per_class=7, seed=0)


@pytest.fixture(scope="module")
def compilation_cache_on():
  """The persistent compilation cache for a module's in-process program runs
  (the binary turns it on), restored afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  from zoomshot_jax import compile_cache  # pylint: disable=g-import-not-at-top
  keys = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
          "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
  before = {k: getattr(jax.config, k) for k in keys}
  compile_cache.setup("")
  yield
  for k, v in before.items():
    jax.config.update(k, v)
