"""Runs the binary in subprocesses: one process, or several joined by gloo.

A launch is a fork of a per-worker forkserver that has imported the heavy
libraries once (tests/zygote.py), running the binary's module as `__main__`
with the child's own environment, working directory, argv and stdout/stderr,
as `python -m` would. ZOOMSHOT_TEST_FORK=0 launches fresh interpreters
instead; tests/test_console.py's quiet run always does (what a fresh
interpreter prints at start-up is what it checks).
"""

import atexit
import functools
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import shutil
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices: int = 1, **extra) -> dict:
  """A child's environment: this one without JAX_* settings, on `devices`
  fake CPU devices, with the suite's XLA flags (tests/conftest.py)."""
  e = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  flags = os.environ.get("ZOOMSHOT_TEST_XLA_FLAGS", "")
  e.update({"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
            "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"})
  e.update(extra)
  return e


def launch(config, workdir, overrides, devices=1, extra_env=None, module="zoomshot_jax.main"):
  """`python -m <module> --config=config --workdir=workdir --config.k=v...`
  on `devices` fake CPU devices (no --config when config is None); returns the
  Popen (stdout/stderr piped)."""
  args = (([f"--config={config}"] if config else []) + [f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])
  return popen(["-m", module] + args, env(devices, **(extra_env or {})))


def popen(argv, child_env, cwd=ROOT):
  """`python *argv` (["-m", module, ...], ["-c", code, ...] or [script, ...])
  in `cwd` with exactly `child_env`: a Popen, or its stand-in for a fork of
  the forkserver (`communicate`, `kill`, `returncode`)."""
  if os.environ.get("ZOOMSHOT_TEST_FORK", "1") != "0":
    return Forked(list(argv), child_env, cwd)
  return subprocess.Popen([sys.executable, *argv], env=child_env, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(argv, child_env=None, cwd=ROOT, timeout=300, check=False):
  """`popen` to the end: a CompletedProcess; CalledProcessError if `check` and
  it failed. `child_env` defaults to the suite's (`env(1)`)."""
  proc = popen(argv, env(1) if child_env is None else child_env, cwd)
  code, out, err = wait(proc, timeout)
  if check and code != 0:
    raise subprocess.CalledProcessError(code, argv, out, err)
  return subprocess.CompletedProcess(argv, code, out, err)


@functools.cache
def _context():
  """multiprocessing's forkserver, started now, having imported tests/zygote.py."""
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(["zygote"])
  # The server is a fresh interpreter with this environment; Python 3.11
  # ignores the sys.path it is sent, and its preload ignores ImportError.
  saved = os.environ.get("PYTHONPATH")
  os.environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), ROOT]
                                             + ([saved] if saved else []))
  try:
    multiprocessing.forkserver.ensure_running()
  finally:
    if saved is None:
      del os.environ["PYTHONPATH"]
    else:
      os.environ["PYTHONPATH"] = saved
  return context


def _main(argv, child_env, cwd, out_path, err_path):
  """In the forked child: what `python *argv` does, in this process."""
  for fd, path in ((1, out_path), (2, err_path)):
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
  if "zygote" not in sys.modules:  # after the redirect: the test shows why
    raise RuntimeError("the forkserver did not import tests/zygote.py")
  os.environ.clear()
  os.environ.update(child_env)
  os.chdir(cwd)
  code = 0
  try:
    if argv[0] == "-m":
      sys.argv = argv[1:]
      sys.path.insert(0, cwd)
      runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
      sys.argv = ["-c", *argv[2:]]
      sys.path.insert(0, "")
      exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # pylint: disable=exec-used
    else:
      sys.argv = list(argv)
      sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
      runpy.run_path(argv[0], run_name="__main__")
  except SystemExit as e:
    code = e.code
  except BaseException:  # what the interpreter does with an uncaught exception
    sys.excepthook(*sys.exc_info())
    code = 1
  finally:
    # multiprocessing ends its children with os._exit: run what exit would
    # (the log's copy to a remote workdir, jax.distributed's shutdown).
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    sys.stdout.flush()
    sys.stderr.flush()
  sys.exit(code)


class Forked:
  """The part of subprocess.Popen the tests use, for a fork of the forkserver."""

  def __init__(self, argv, child_env, cwd):
    self._dir = tempfile.mkdtemp(prefix="zoomshot-child-")
    self._paths = [os.path.join(self._dir, name) for name in ("stdout", "stderr")]
    self._process = _context().Process(target=_main,
                                       args=(argv, child_env, str(cwd), *self._paths))
    self._process.start()
    self.args = argv
    self.returncode = None

  def communicate(self, timeout=None):
    self._process.join(timeout)
    if self._process.exitcode is None:
      raise subprocess.TimeoutExpired(self.args, timeout)
    self.returncode = self._process.exitcode
    texts = [open(p, encoding="utf-8", errors="replace").read() for p in self._paths]
    shutil.rmtree(self._dir, ignore_errors=True)
    return tuple(texts)

  def kill(self):
    self._process.kill()


def process_env(port: int, count: int, index: int) -> dict:
  """Environment of process `index` of a `count`-process run (gloo on CPU)."""
  return {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(count),
          "JAX_PROCESS_ID": str(index)}


def wait(proc, timeout=300):
  """(returncode, stdout, stderr); a hung process is killed, not waited on forever."""
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    err += f"\n[killed after {timeout}s]"
  return proc.returncode, out, err


def single_and_two_hosts(config, root, overrides) -> None:
  """The binary once on 2 devices (into root/single) and as 2 gloo processes
  of 1 device each (into root/multi); asserts that every process exits 0."""
  single = launch(config, root / "single", overrides, devices=2)
  port = free_port()
  multi = [launch(config, root / "multi", overrides, devices=1,
                  extra_env=process_env(port, 2, i)) for i in range(2)]
  for rc, _, err in [wait(p) for p in [single] + multi]:
    assert rc == 0, err[-3000:]

