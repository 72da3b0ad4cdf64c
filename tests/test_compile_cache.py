"""The persistent compilation cache: a second process loads what the first compiled."""

import json
import os

import procs

SCRIPT = """
import json, sys
from zoomshot_jax import compile_cache, console
path = compile_cache.setup(sys.argv[1])
import jax, jax.numpy as jnp
before = compile_cache.snapshot()
with console.stage("fit"):   # its line says what the cache did
  f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))
  f(jnp.ones((16, 16))).block_until_ready()
  f(jnp.ones((32, 16))).block_until_ready()   # a second shape: a second compilation
print(json.dumps({"path": path, "summary": compile_cache.summary(before),
                  **compile_cache.snapshot()}))
"""


def _run(value):
  out = procs.run(["-c", SCRIPT, value], timeout=120, check=True)
  lines = out.stdout.strip().splitlines()
  return {**json.loads(lines[-1]), "stage_line": lines[-2]}


def test_second_process_loads_every_compilation_from_the_cache(tmp_path):
  cache = str(tmp_path / "jax_cache")
  first, second = _run(cache), _run(cache)
  assert first["path"] == cache and os.listdir(cache)
  assert first["compiles"] >= 2 and first["hits"] == 0
  assert second["compiles"] == first["compiles"] and second["hits"] == second["compiles"]
  assert second["summary"].startswith(f"{second['compiles']} compilations "
                                      f"({second['hits']} from the cache)")
  assert second["stage_line"].startswith("fit: done in ")
  assert f"({second['compiles']} compilations ({second['compiles']} from the cache), " in (
      second["stage_line"])
  assert "(0 from the cache)" in first["stage_line"]


def test_none_switches_it_off(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOOMSHOT_CACHE", str(tmp_path / "user_cache"))
  off = _run("none")
  assert off["path"] is None and off["hits"] == 0 and off["compiles"] >= 2
  assert not (tmp_path / "user_cache").exists()
  default = _run("")   # "" = the user cache dir
  assert default["path"] == str(tmp_path / "user_cache" / "jax")
  assert os.listdir(default["path"])


def test_asif_class_uses_the_cache_and_keeps_one_jax_already_has(tmp_path):
  """A notebook's second session loads ASIF's programs (top_k="xla": on CPU
  devices the default search runs on the host and compiles nothing); a
  cache dir the user gave jax is not replaced by ours."""
  script = """
import json, sys
import jax, numpy as np
if sys.argv[2] == "user":
  jax.config.update("jax_compilation_cache_dir", sys.argv[1] + "/user")
from zoomshot_jax import compile_cache
from zoomshot_jax.asif import Asif
rng = np.random.default_rng(0)
model = Asif(rng.standard_normal((64, 8)), rng.standard_normal((64, 6)), k=8, block=8,
             top_k=sys.argv[3])
model.classify(rng.standard_normal((4, 8)), rng.standard_normal((3, 6)))
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, **compile_cache.snapshot()}))
"""
  env = procs.env(1, ZOOMSHOT_CACHE=str(tmp_path / "ours"))

  def run(mode, top_k="xla"):
    out = procs.run(["-c", script, str(tmp_path), mode, top_k], env, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

  first, second = run("ours"), run("ours")
  assert first["dir"] == str(tmp_path / "ours" / "jax") and first["hits"] == 0
  assert second["compiles"] == first["compiles"] >= 2 and second["hits"] == second["compiles"]
  assert run("user")["dir"] == str(tmp_path / "user")
  assert run("ours", "auto")["compiles"] == 0


def test_other_processes_are_told_the_cache_is_read_only_for_them(monkeypatch):
  """JAX writes cache entries from process 0 only: the other processes' logs
  say so, and where their cache has to be for them to read it."""
  import jax  # pylint: disable=g-import-not-at-top
  from zoomshot_jax import compile_cache  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  for index, told in ((0, False), (3, True)):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    note = compile_cache.process_note("/local/cache")
    assert (note is not None) == told
  assert "process 3" in note and "/local/cache" in note and "process 0 only" in note
  assert compile_cache.process_note(None) is None           # the cache is off
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  assert compile_cache.process_note("/local/cache") is None  # one process
