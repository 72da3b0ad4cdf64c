"""JAX's persistent compilation cache, on for every binary, and what it saved.

`config.compilation_cache` (every config has it): "" = the user cache dir
(`$ZOOMSHOT_CACHE` or `~/.cache/zoomshot_jax`, under `jax/`), a path
(`gs://` works, shared by every worker of a pod), or "none" to switch it off.
A second run of a binary on the same machine then loads its executables
instead of compiling them again (on a pod, the workers other than process 0
only from a shared path: `process_note`). Every compilation is counted (jax's
monitoring events), so each console stage can say how many of its
compilations came from the cache and how long compiling took.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_counts = {"hits": 0, "compiles": 0, "compile_s": 0.0, "saved_s": 0.0}
_listening = False

# jax's monitoring events (jax/_src/compiler.py, compilation_cache.py, dispatch.py).
_HIT = "/jax/compilation_cache/cache_hits"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"


def default_dir() -> str:
  root = os.environ.get("ZOOMSHOT_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "zoomshot_jax"))
  return os.path.join(root, "jax")


def _on_event(event: str, **kwargs) -> None:
  del kwargs
  if event == _HIT:
    with _lock:
      _counts["hits"] += 1


def _on_duration(event: str, duration: float, **kwargs) -> None:
  del kwargs
  with _lock:
    if event == _COMPILE:  # every compilation, read from the cache or not
      _counts["compiles"] += 1
      _counts["compile_s"] += float(duration)
    elif event == _SAVED:
      _counts["saved_s"] += float(duration)


def setup(value: str) -> str | None:
  """Points jax at the cache `value` names; returns its directory (None: off).

  Every compilation is cached, however short: on CPU most take well under
  jax's default threshold of one second, and a run compiles hundreds.
  """
  import jax  # pylint: disable=g-import-not-at-top
  global _listening
  if not _listening:
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _listening = True
  if value == "none":
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = value or default_dir()
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def setup_unless_set(value: str = "") -> str | None:
  """`setup(value)` for library entry points (the `Asif` class in a notebook):
  a cache directory the user already gave jax is kept, not replaced."""
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current and value != "none":
    return current
  return setup(value)


def process_note(path: str | None) -> str | None:
  """What the cache does on this process of a multi-process run, for its log
  (None on process 0, in a one-process run, or with the cache off).

  JAX writes cache entries from process 0 only (jax/_src/compiler.py), so on
  a pod the other workers read them only from a directory they share with it;
  with the default per-host directory they compile every run, which a repeated
  run's stage lines on those workers show as "0 from the cache".
  """
  import jax  # pylint: disable=g-import-not-at-top
  if path is None or jax.process_count() == 1 or jax.process_index() == 0:
    return None
  return (f"Compilation cache on process {jax.process_index()}: read-only (JAX writes "
          f"entries from process 0 only). This process loads them only where {path} is "
          "process 0's cache too (a gs:// path or a shared filesystem); a per-host directory "
          "is never filled here, so this process compiles every run.")


def snapshot() -> dict:
  with _lock:
    return dict(_counts)


def summary(since: dict | None = None) -> str:
  """"12 compilations (9 from the cache), 1.8s compiling" since a snapshot; "" if none."""
  now, since = snapshot(), since or dict.fromkeys(_counts, 0)
  hits, compiles = now["hits"] - since["hits"], now["compiles"] - since["compiles"]
  compile_s = now["compile_s"] - since["compile_s"]
  if not compiles:
    return ""
  text = f"{compiles} compilations ({hits} from the cache), {compile_s:.1f}s compiling"
  saved = now["saved_s"] - since["saved_s"]
  return text + (f", {saved:.1f}s saved" if saved >= 0.05 else "")
