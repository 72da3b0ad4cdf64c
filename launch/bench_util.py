"""Shared by the launch/bench_*.py scripts (run as `python launch/bench_*.py`)."""

import os


def available_cores() -> int:
  """Cores this process may run on (affinity-aware, unlike os.cpu_count)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1
