"""Shared fixtures. Tests see 8 fake CPU devices, as on an 8-chip host.

The flag must be set before jax is imported anywhere in the session.
"""

import os

# XLA:CPU's LLVM backend at -O0: compiling hundreds of small programs is
# most of the suite's time, and the tests check values, not speed (the
# benchmarks in launch/ are never run under it). The VL step compiled
# standalone: 17.8 s by default, 10.2 s at -O0. (With the older loop emitter
# too, --xla_cpu_use_fusion_emitters=false, 5.7 s, but the suite was no
# faster and two CLIP-TD tests that compare programs bit for bit failed.)
# Subprocesses get the same flags (tests/procs.py);
# ZOOMSHOT_TEST_XLA_FLAGS="" compiles as users do. An XLA flag a newer
# jaxlib no longer knows aborts at start-up: drop it here if so.
os.environ.setdefault("ZOOMSHOT_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    os.environ["ZOOMSHOT_TEST_XLA_FLAGS"],
                                    "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["ZOOMSHOT_CACHE"] = os.environ.get("ZOOMSHOT_TEST_CACHE", "/tmp/zoomshot_test_cache")

import pytest  # noqa: E402

from zoomshot_jax import compile_cache, host_memory  # noqa: E402
from zoomshot_jax.encoders import testing  # noqa: E402
from zoomshot_jax.tools import toy_assets  # noqa: E402

# The persistent compilation cache in-process too, in the directory the
# binaries the tests launch use ($ZOOMSHOT_CACHE/jax): tests compile many
# identical programs (the same tiny models, steps and evaluators) in
# different test functions and processes.
compile_cache.setup("")
# As the binaries do (zoomshot_jax/host_memory.py): the in-process tests'
# steps reuse freed buffers instead of faulting them in again.
host_memory.keep_freed_memory()


# xdist hands out whole modules (pytest.ini: --dist loadfile), so a module's
# fixtures run once, on one worker. Under `load`, the default, nothing keeps a
# module together: in one run both workers ran the micro demo's fixture.
# loadgroup would be finer but silently groups nothing under pytest 9.2
# (pytest-xdist issue #1386: xdist 3.8 renames `item._nodeid`, which pytest no
# longer reads). The longest modules go first (seconds on the 2-core CI
# machine, 2026-12-03: demo 240-250, distill 215-240, zoomshot 130-145, then
# 50-100 each), so they run beside the short ones rather than after them.
FIRST = ("test_demo.py", "test_distill.py", "test_zoomshot.py", "test_clip_td.py",
         "test_vl_finetune.py", "test_asif_main.py", "test_main.py", "test_demo_shipped.py",
         "test_encoders.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {f"tests/{name}": i for i, name in enumerate(FIRST)}
  items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(FIRST)))  # stable


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
