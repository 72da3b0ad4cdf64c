"""Host memory: keep what XLA:CPU frees in the process instead of handing it
back (`keep_freed_memory`), and small pages for a large buffer written once
(`empty_small_pages`).

XLA:CPU allocates each execution's temporaries and outputs with the C
library's malloc, so a training step on the CPU asks for the same large
buffers on every step. glibc serves a request over its mmap threshold (at
most 32 MiB) with a fresh `mmap` and unmaps it when it is freed, and trims
the top of its heap once more than the trim threshold is free: the next
step's buffers are then new pages, which the kernel faults in and zeroes
again. The demo's L2 distillation (a ResNet student, batch 128, 2 cores)
took 4.6M page faults and 17 s of system time in an 85 s run that way.

`keep_freed_memory()` tells glibc, through `mallopt`, to serve large blocks
from its heap (M_MMAP_MAX = 0; where the heap cannot grow, glibc still
falls back to mmap) and to trim the heap only past 2 GiB free
(M_TRIM_THRESHOLD), so freed buffers are reused: that stage went from
49-53 s to 40 s and its page faults from 4.6M to 0.6M, for a few percent
more peak memory (the figures, and the whole demo's: README, Host memory).
What it does not reach: a block over 64 MiB asked for by a thread other
than the main one, which glibc always maps on its own (a per-thread
arena's heap is 64 MiB at most); the VL student's VCR step is such a case.
One arena for every thread (M_ARENA_MAX = 1) reaches those too but was
tried and not kept: peak memory about doubled, and compiling, which
allocates from many threads at once, slowed on the one arena's lock.

The binaries (`main.main`, and so the demo) call it before anything large
is allocated; importing the library does not (a notebook keeps glibc's
defaults unless it calls this). Nothing changes where the C library is not
glibc, where the user tuned malloc already (MALLOC_*_ variables, glibc.malloc
tunables, an LD_PRELOADed allocator such as jemalloc or tcmalloc), or with
ZOOMSHOT_KEEP_FREED_MEMORY=0. No result depends on it, only where freed
memory goes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

# glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mallopt takes an int; 2 GiB free at the top of the heap before it is trimmed.
_TRIM_THRESHOLD = 2**31 - 1

USER_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                  "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
OPT_OUT = "ZOOMSHOT_KEEP_FREED_MEMORY"


def _libc_with(symbol: str):
  """This process's C library on Linux, if it has `symbol`; else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None)
  except OSError:
    return None
  return libc if hasattr(libc, symbol) else None


def _glibc():
  # glibc only: musl, for one, has a mallopt that does nothing.
  return _libc_with("gnu_get_libc_version")


def _users_choice(environ) -> str | None:
  if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
    return f"{OPT_OUT}={environ[OPT_OUT]}"
  for name in USER_VARIABLES:
    if name in environ:
      return f"{name} is set"
  if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
    return "GLIBC_TUNABLES sets glibc.malloc"
  if "malloc" in environ.get("LD_PRELOAD", ""):
    return "LD_PRELOAD loads an allocator"
  return None


def keep_freed_memory(environ=None) -> str:
  """Sets glibc's malloc to keep freed memory; returns what was done, for
  the log. Idempotent: the binaries call it once, before anything large is
  allocated (blocks freed earlier keep glibc's defaults)."""
  environ = os.environ if environ is None else environ
  libc = _glibc()
  if libc is None:
    return "left as the C library has it (not glibc)"
  if reason := _users_choice(environ):
    return f"left as it is ({reason})"
  if libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD):
    return ("freed memory kept for reuse (glibc: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB; "
            f"{OPT_OUT}=0 keeps glibc's defaults)")
  return "left as it is (glibc's mallopt refused the settings)"


# <linux/mman.h>
_MADV_NOHUGEPAGE = 15


def empty_small_pages(shape, dtype=np.float32) -> np.ndarray:
  """np.empty with the kernel's small (4 KiB) pages, not transparent huge pages.

  NumPy asks Linux for huge pages for every array of 4 MiB or more
  (madvise MADV_HUGEPAGE). For a large buffer a process writes once, such as
  ASIF's similarity buffer, that can be slower: huge pages come from the
  kernel's free 2 MiB blocks, which a virtual machine with free page
  reporting has handed back to its host, so each first touch is a fault in
  the host too. On this project's 2-core Firecracker VM (2026-12-07), an
  800 MB buffer's first writes took 2.1 s of system time in 380 huge-page
  faults (no compaction: compact_stall did not move), against 0.31 s in
  196k small-page faults; a second buffer in the same process (the first's
  blocks, still backed) 0.15 s with huge pages. Elsewhere this only gives
  up the TLB's reach: products into it ran 4-5% slower than into huge
  pages. Where madvise is missing (not Linux) this is np.empty.
  """
  out = np.empty(shape, dtype)
  libc = _libc_madvise()
  page = mmap.PAGESIZE
  lo = -(-out.ctypes.data // page) * page  # whole pages inside the array
  hi = (out.ctypes.data + out.nbytes) // page * page
  if libc is not None and hi > lo:
    libc.madvise(lo, hi - lo, _MADV_NOHUGEPAGE)  # advice: a refusal changes nothing
  return out


def _libc_madvise():
  libc = _libc_with("madvise")
  if libc is not None:
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
  return libc
