"""Writing results the same way in every program: results.json, TensorBoard, a table."""

from __future__ import annotations

import os
import re

import jax
from clu import metric_writers

from zoomshot_jax import io_utils


def scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
  """The numeric leaves of a metrics dict, nested keys joined by "/"
  ({"per_answer_type": {"number": 41.2}} -> {"per_answer_type/number": 41.2})."""
  out = {}
  for k, v in metrics.items():
    if isinstance(v, dict):
      out.update(scalars(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      out[f"{prefix}{k}"] = v
  return out


def _logged(r: dict) -> dict:
  """What TensorBoard gets of one dataset's metrics."""
  return {k: r[k] for k in ("top1", "top5")} if "top1" in r else scalars(r)


def _classification(results: dict[str, dict]) -> bool:
  return all("top1" in r for r in results.values())


def results_table(results: dict[str, dict]) -> str:
  """{dataset: {"top1", "top5", "num_examples"}} -> a fixed-width text table;
  other metrics (the VL tasks') as one "dataset  metric  value" row each."""
  if not _classification(results):
    rows = [(name, k, v) for name, r in results.items() for k, v in scalars(r).items()]
    w1 = max([len("dataset")] + [len(n) for n, _, _ in rows])
    w2 = max([len("metric")] + [len(k) for _, k, _ in rows])
    return "\n".join([f"{'dataset':<{w1}}  {'metric':<{w2}}  {'value':>9}"] + [
        f"{n:<{w1}}  {k:<{w2}}  {v:>9.2f}" if isinstance(v, float) else
        f"{n:<{w1}}  {k:<{w2}}  {v:>9d}" for n, k, v in rows])
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
    groups: {group: {dataset: {"top1", "top5", "num_examples"}}} (or other
      metrics, nested dicts allowed: every numeric leaf is a scalar); the group
      "" alone writes {dataset: ...} (one model), otherwise {group: {...}}
      (e.g. a mapped encoder and CLIP).
  """
  if jax.process_index() != 0:
    return
  writer = metric_writers.create_default_writer(workdir)
  writer.write_scalars(0, {"/".join(p for p in (group, name, k) if p): v
                           for group, results in groups.items()
                           for name, r in results.items() for k, v in _logged(r).items()})
  writer.close()
  single = list(groups) == [""]
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"),
                             groups[""] if single else groups)
  for group, results in groups.items():
    print((f"== {group}\n" if group else "") + results_table(results), flush=True)
