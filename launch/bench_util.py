"""Shared by the launch/ scripts (run as `python launch/<script>.py`)."""

import importlib.machinery
import importlib.util
import json
import os
import sys
import time
import types


def available_cores() -> int:
  """Cores this process may run on (affinity-aware, unlike os.cpu_count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def have(module: str) -> bool:
  """Whether `module` can be imported here (without importing it)."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def define_torch_flags(flags) -> None:
  """--torch and --torch_device, the same in every script with a PyTorch baseline."""
  flags.DEFINE_bool("torch", True, "Run the PyTorch baseline (skipped if torch is missing).")
  flags.DEFINE_enum("torch_device", "auto", ["auto", "cpu", "cuda"],
                    "Where the PyTorch baseline runs; auto: cuda if torch sees a GPU.")


def usage_error(message: str) -> Exception:
  """A user's mistake on the command line, to raise: absl prints `message`
  and the usage line, no traceback, and exits with status 2."""
  from absl import app  # pylint: disable=g-import-not-at-top
  return app.UsageError(message, exitcode=2)


def check_args(argv, flag_values, **least) -> None:
  """Refuses (usage_error) positional arguments, and each named flag below
  its least value (unset ones, None, are the script's to fill): a run of no
  steps or an empty batch would end in a traceback or print a rate of
  nothing."""
  if len(argv) > 1:
    raise usage_error(f"unexpected arguments: {argv[1:]}")
  for name, low in least.items():
    value = flag_values[name].value
    if value is not None and value < low:
      raise usage_error(f"--{name}={value}: give {low} or more.")


def torch_device(torch, flag: str):
  """(device, sync) for --torch_device `flag`: "auto" is cuda when torch sees
  a GPU; sync() waits for the device (a no-op on the CPU)."""
  dev = flag
  if dev == "auto":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
  return dev, (torch.cuda.synchronize if dev == "cuda" else lambda: None)


def emit(out: dict, json_out: str) -> None:
  """Prints the figures as one JSON line, and writes them to json_out if given."""
  if json_out:
    write_json(json_out, out)
  print(json.dumps(out))


def write_json(path: str, obj) -> None:
  """Writes `obj` as JSON to a local `path` atomically (temp name, then rename)."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=float)
  os.replace(tmp, path)


def throughput(run, wait, steps: int, items: int, warmup: int = 2) -> float:
  """items/s of `run()` (one step) over `steps` calls after `warmup` untimed
  ones; `wait(last result)` blocks until the device has finished."""
  last = None
  for _ in range(warmup):
    last = run()
  wait(last)
  t0 = time.perf_counter()
  for _ in range(steps):
    last = run()
  wait(last)
  return steps * items / (time.perf_counter() - t0)


def versus_torch(out: dict, unit: str, run_ours, run_torch, want_torch: bool, json_out: str,
                 digits: int = 1, missing: str = "torch is not installed") -> None:
  """Ours, then PyTorch's (run_torch() -> (rate, device)) if asked and installed:
  out["ours_<unit>_per_s"], ["torch_<unit>_per_s"], ["torch_device"] and
  ["ratio_ours_over_torch"]; prints each and the JSON, writes json_out."""
  ours = out[f"ours_{unit}_per_s"] = run_ours()
  print(f"ours:    {ours:.{digits}f} {unit}/s", flush=True)
  if want_torch and have("torch"):
    theirs, out["torch_device"] = run_torch()
    out[f"torch_{unit}_per_s"] = theirs
    out["ratio_ours_over_torch"] = ours / theirs
    print(f"pytorch: {theirs:.{digits}f} {unit}/s; ratio ours/pytorch "
          f"{out['ratio_ours_over_torch']:.2f}x", flush=True)
  else:
    print(f"pytorch: skipped ({missing})")
  emit(out, json_out)


class _Absent:
  """Any attribute of a missing module: raises when called, not when named."""

  def __init__(self, what: str):
    self._what = what

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Absent(f"{self._what}.{name}")

  def __call__(self, *args, **kwargs):
    if self._what == "tensorflow.config.set_visible_devices":
      return None  # hides GPUs from TF: nothing to hide without TF
    raise ModuleNotFoundError(
        f"{self._what}: {self._what.split('.')[0]} is not installed on this machine "
        "(bench_util.stub_missing stood in for it so that modules importing it load); "
        "this part of the benchmark needs it.")


class _AbsentModule(types.ModuleType):

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Absent(f"{self.__name__}.{name}")


def stub_missing(modules=("tensorflow", "tensorflow_datasets", "clu")) -> list:
  """Stands in for those of `modules` that are not installed; returns their names.

  zoomshot_jax imports TensorFlow (tf.data, tf.io.gfile), TFDS and clu at
  module level, also in modules whose array code the benchmarks time
  (training.loop, evaluation). An accelerator image may lack all three (the
  lent H200's does). The stand-in lets those modules load; any use of one of
  its attributes (other than hiding GPUs from TF) raises ModuleNotFoundError,
  so a part that really needs TF fails loudly instead of measuring nothing.
  Where the modules are installed this does nothing.
  """
  stubbed = [m for m in modules if m not in sys.modules and not have(m)]
  for m in stubbed:
    sys.modules[m] = _AbsentModule(m)
    # A spec, so that importlib.util.find_spec(m) (transformers asks) answers.
    sys.modules[m].__spec__ = importlib.machinery.ModuleSpec(m, None)
  return stubbed
