"""host_memory.keep_freed_memory: a step's freed buffers are reused, not faulted in again.

Each case runs in a fresh interpreter (the suite's own processes have the
setting already, tests/conftest.py): a thread — XLA:CPU runs its steps on
worker threads — allocates a 48 MiB block (over glibc's largest mmap
threshold, 32 MiB) with the C library's malloc, writes it and frees it,
three times, and counts its page faults each time.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests import procs
from zoomshot_jax import host_memory

STEPS = r"""
import ctypes, json, resource, sys, threading
from zoomshot_jax import host_memory
said = host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
SIZE = int(sys.argv[1]) << 20
faults = []
def steps():
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc(SIZE)
    libc.memset(block, 1, SIZE)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
t = threading.Thread(target=steps)
t.start(); t.join()
print(json.dumps({"said": said, "faults": faults, "pages": SIZE // 4096}))
"""


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def _steps(mib=48, **env):
  child_env = procs.env(**env)
  for name in host_memory.USER_VARIABLES + (host_memory.OPT_OUT, "GLIBC_TUNABLES"):
    if name not in env:
      child_env.pop(name, None)
  out = subprocess.run([sys.executable, "-c", STEPS, str(mib)], env=child_env, cwd=procs.ROOT,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
  kept = _steps()
  assert kept["said"].startswith("freed memory kept for reuse"), kept
  # The first block is new memory; the next two reuse it.
  assert kept["faults"][0] > kept["pages"] // 2, kept
  assert max(kept["faults"][1:]) < kept["pages"] // 100, kept
  # glibc's defaults: a block this size from a thread is an mmap of its own,
  # unmapped on free, so every step faults it in again (the cost it removes).
  default = _steps(**{host_memory.OPT_OUT: "0"})
  assert default["said"] == f"left as it is ({host_memory.OPT_OUT}=0)", default
  assert min(default["faults"]) > kept["pages"] // 2, default
  # What it does not reach (the module's docstring): a thread's block over
  # 64 MiB, the most a per-thread arena's heap holds, is mapped on its own.
  large = _steps(mib=256)
  assert min(large["faults"]) > large["pages"] // 2, large


def test_a_users_own_malloc_settings_are_left_alone():
  assert _steps(MALLOC_ARENA_MAX="4")["said"] == "left as it is (MALLOC_ARENA_MAX is set)"
  said = host_memory.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
  assert said == "left as it is (GLIBC_TUNABLES sets glibc.malloc)"
  said = host_memory.keep_freed_memory({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
  assert said == "left as it is (LD_PRELOAD loads an allocator)"


def _vm_flags(address: int) -> list[str]:
  """The VmFlags of this process's mapping that holds `address`."""
  inside = False
  with open("/proc/self/smaps") as f:
    for line in f:
      head = line.split()[0]
      if "-" in head and not head.endswith(":"):
        lo, hi = (int(x, 16) for x in head.split("-"))
        inside = lo <= address < hi
      elif inside and head == "VmFlags:":
        return line.split()[1:]
  raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and smaps are Linux's")
def test_empty_small_pages_asks_the_kernel_for_small_pages():
  """The array's pages are marked no-huge-page ("nh" in smaps' VmFlags);
  NumPy's own large arrays are marked for huge pages ("hg"), where NumPy
  asks for them. The array is an ordinary writable one."""
  ours = host_memory.empty_small_pages((64, 1 << 18))
  assert ours.shape == (64, 1 << 18) and ours.dtype == np.float32 and ours.flags.writeable
  ours[:] = 1.0
  assert "nh" in _vm_flags(ours.ctypes.data + ours.nbytes // 2)
  theirs = np.empty((64, 1 << 18), np.float32)
  flags = _vm_flags(theirs.ctypes.data + theirs.nbytes // 2)
  assert "nh" not in flags
  if np._core.multiarray._get_madvise_hugepage():  # pylint: disable=protected-access
    assert "hg" in flags
