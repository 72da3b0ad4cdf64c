"""Writing results the same way in every program: results.json, TensorBoard, a table."""

from __future__ import annotations

import os
import re

import jax
from clu import metric_writers

from zoomshot_jax import io_utils


def results_table(results: dict[str, dict]) -> str:
  """{dataset: {"top1", "top5", "num_examples"}} -> a fixed-width text table."""
  width = max([len("dataset")] + [len(k) for k in results])
  lines = [f"{'dataset':<{width}}  {'top1 %':>7}  {'top5 %':>7}  {'examples':>9}"]
  for name, r in results.items():
    lines.append(f"{name:<{width}}  {r['top1']:>7.2f}  {r['top5']:>7.2f}  {r['num_examples']:>9d}")
  return "\n".join(lines)


def output_name(dataset: str) -> str:
  """A dataset name as a file name ("folder:/a/b" -> "folder_a_b")."""
  return re.sub(r"[^\w.\-]+", "_", dataset)


def predictions_path(workdir: str, dataset: str) -> str:
  return os.path.join(workdir, "predictions", output_name(dataset) + ".npz")


def write_results(workdir: str, groups: dict[str, dict[str, dict]]) -> None:
  """results.json, TensorBoard scalars and a printed table (process 0 only).

  Args:
    groups: {group: {dataset: {"top1", "top5", "num_examples"}}}; the group
      "" alone writes {dataset: ...} (one model), otherwise {group: {...}}
      (e.g. a mapped encoder and CLIP).
  """
  if jax.process_index() != 0:
    return
  writer = metric_writers.create_default_writer(workdir)
  writer.write_scalars(0, {"/".join(p for p in (group, name, k) if p): r[k]
                           for group, results in groups.items()
                           for name, r in results.items() for k in ("top1", "top5")})
  writer.close()
  single = list(groups) == [""]
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"),
                             groups[""] if single else groups)
  for group, results in groups.items():
    print((f"== {group}\n" if group else "") + results_table(results), flush=True)
