"""Runs the binary in subprocesses: one process, or several joined by gloo."""

import os
import socket
import subprocess
import sys

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
  child_env = env(devices, **(extra_env or {}))
  cmd = ([sys.executable, "-m", module] + ([f"--config={config}"] if config else [])
         + [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()])
  return subprocess.Popen(cmd, env=child_env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


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

