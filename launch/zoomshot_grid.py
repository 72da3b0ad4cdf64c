r"""Runs a grid of Zoom-shot / Text-to-Concept runs and tabulates zero-shot top-1.

One run per (CLIP, vision encoder, regime) for Zoom-shot and per (CLIP,
vision encoder, solver) for Text-to-Concept, each in <root>/<name>:

  zoomshot-<vision>-<clip>-<regime>   configs/zoomshot.py:<vision>,<clip>,<regime>
  t2c-<vision>-<clip>-<solver>        configs/text_to_concept.py:<vision>,<clip>,<solver>

Runs go one after the other, here (`python -m zoomshot_jax.main`) or on a
Cloud TPU slice through launch/tpu_pod.sh (--tpu, --zone, --accelerator).
Arguments after `--` are passed to every run (e.g. --config.data_dir=...).
A run that already has a results.json is skipped unless --rerun (the binary
resumes an interrupted run from its checkpoints by itself).

Then every <root>/*/results.json ({method or "clip": {dataset: {"top1",
"top5", "num_examples"}}}) and its config.json are collected into one
markdown table of top-1 % per dataset (rows: run x method, plus the CLIP
reference once per CLIP; a mean column; a missing or failed run is a row of
"—" with a note), printed and written to <root>/results.md.

  python launch/zoomshot_grid.py --root=/tmp/grid --vision=dinov2_s14 \
      --regimes=1pct_20ep -- --config.data_dir=/data/tfds
  python launch/zoomshot_grid.py --root=gs://bucket/zoomshot --tpu=zs-pod \
      --zone=us-central2-b --accelerator=v4-32 -- --config.data_dir=gs://bucket/tfds
  python launch/zoomshot_grid.py --root=gs://bucket/zoomshot --collect_only
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys

import tensorflow as tf
from absl import app, flags

from bench_util import usage_error  # launch/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python launch/<script>.py` puts launch/ on the path, not the repo root.
sys.path.insert(0, ROOT)
from zoomshot_jax import io_utils  # pylint: disable=g-import-not-at-top,wrong-import-position
from zoomshot_jax.configs import common as config_common  # pylint: disable=g-import-not-at-top

CONFIGS = {"zoomshot": "configs/zoomshot.py", "text_to_concept": "configs/text_to_concept.py"}
PREFIX = {"zoomshot": "zoomshot", "text_to_concept": "t2c"}

flags.DEFINE_string("root", None, "Directory (local or gs://) holding one workdir per run.")
flags.DEFINE_list("vision", ["dinov2_b14"], "Vision encoder words of configs/zoomshot.py.")
flags.DEFINE_list("clips", ["b32"], "CLIP words (b32, b16, l14).")
flags.DEFINE_list("regimes", ["20pct", "1pct_20ep"], "Zoom-shot regime words.")
flags.DEFINE_list("methods", ["zoomshot", "text_to_concept"], "Methods to run.")
flags.DEFINE_list("t2c_solvers", ["reference"],
                  "Text-to-Concept solver words (reference, closed_form).")
flags.DEFINE_string("tpu", None, "Run on this Cloud TPU VM through launch/tpu_pod.sh.")
flags.DEFINE_string("zone", None, "With --tpu: its zone, e.g. us-central2-b.")
flags.DEFINE_string("accelerator", None, "With --tpu: its type, e.g. v4-32.")
flags.DEFINE_bool("collect_only", False,
                  "Run nothing; collect the table. The grid flags, when given, name the "
                  "runs expected (missing ones get a row); otherwise every run in --root.")
flags.DEFINE_bool("rerun", False, "Run again runs that already have a results.json.")
flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")
FLAGS = flags.FLAGS

_GRID_FLAGS = ("vision", "clips", "regimes", "methods", "t2c_solvers")
_MISSING = "—"


@dataclasses.dataclass(frozen=True)
class GridRun:
  name: str       # directory under --root
  config: str     # --config value, relative to the repository root
  clip: str       # CLIP checkpoint, to group the table before config.json exists


def grid(visions, clips, regimes, methods, solvers) -> list[GridRun]:
  """The runs of the grid, grouped by CLIP; words checked against the configs."""
  zs, t2c = config_common.load("zoomshot"), config_common.load("text_to_concept")
  for flag, words, table in (("vision", visions, zs.VISION), ("clips", clips, zs.CLIPS),
                             ("regimes", regimes, zs.REGIMES), ("methods", methods, CONFIGS),
                             ("t2c_solvers", solvers, t2c.SOLVERS)):
    unknown = [w for w in words if w not in table]
    if unknown:
      raise usage_error(f"--{flag}: unknown {unknown}; known: {sorted(table)}.")
  runs = []
  for clip in clips:
    for vision in visions:
      for method in methods:
        for last in (regimes if method == "zoomshot" else solvers):
          words = f"{vision},{clip},{last}"
          runs.append(GridRun(name=f"{PREFIX[method]}-{words.replace(',', '-')}",
                              config=f"{CONFIGS[method]}:{words}", clip=zs.CLIPS[clip]))
  return runs


def command(run: GridRun, root: str, overrides: list[str]) -> list[str]:
  """The command line that runs `run` here or, with --tpu, on the TPU slice."""
  workdir = os.path.join(root, run.name)
  if FLAGS.tpu:
    return ["bash", "launch/tpu_pod.sh", FLAGS.tpu, FLAGS.zone, FLAGS.accelerator,
            run.config, workdir, *overrides]
  return [sys.executable, "-m", "zoomshot_jax.main", f"--config={run.config}",
          f"--workdir={workdir}", *overrides]


def _read_json(path: str):
  """The file's JSON, or None if it does not exist (ValueError if it is not JSON)."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


def _subdirs(root: str) -> list[str]:
  if not tf.io.gfile.isdir(root):
    return []
  # GCS lists directories with a trailing "/".
  return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(root)
                if tf.io.gfile.isdir(os.path.join(root, n)))


# ----------------------------------------------------------------------------
# Collection and the table.


@dataclasses.dataclass
class Row:
  run: str                          # run name, or the CLIP checkpoint for a reference row
  method: str                       # "zoomshot", "text_to_concept", "clip", or "—"
  clip: str                         # the group this row sits in
  top1: dict = dataclasses.field(default_factory=dict)    # {dataset: top-1 %}
  note: str = ""


def collect(root: str, expected: list[GridRun], failed: dict | None = None
            ) -> tuple[list[Row], list[str]]:
  """Rows of every run under `root` and of every `expected` run, and the datasets.

  Args:
    expected: runs that should exist; a missing one gets a row with a note.
    failed: {run name: exit status} of runs this invocation saw fail.

  Returns:
    (rows grouped by CLIP, each group's reference row first; dataset columns
     in the order the runs' configs list them, then any others sorted).
  """
  failed = failed or {}
  names = [r.name for r in expected]
  names += [n for n in _subdirs(root) if n not in names and any(
      tf.io.gfile.exists(os.path.join(root, n, f)) for f in ("results.json", "config.json"))]
  clip_of = {r.name: r.clip for r in expected}
  rows, references, datasets = [], {}, []
  for name in names:
    workdir = os.path.join(root, name)
    config, results, note = _load(workdir)
    clip = config.get("clip") or clip_of.get(name, "unknown CLIP")
    for group in config.get("evals", {}).values():
      for d in str(group.get("datasets", "")).split(","):
        if d and d not in datasets:
          datasets.append(d)
    if results is None:
      rows.append(Row(run=name, method=config.get("zoomshot", {}).get("method", _MISSING),
                      clip=clip,
                      note=note or _missing_note(name, workdir, config, failed)))
      continue
    if name in failed:
      note = f"failed now (exit status {failed[name]}); these results are from before"
    for method, top1 in results.items():
      if method == "clip":
        ref = references.setdefault(clip, Row(run=clip, method="clip", clip=clip))
        for d, v in top1.items():
          ref.top1.setdefault(d, v)  # the same CLIP on the same data: first run wins
      else:
        rows.append(Row(run=name, method=method, clip=clip, top1=top1, note=note))
  for row in list(references.values()) + rows:
    datasets += sorted(d for d in row.top1 if d not in datasets)
  ordered = []
  for clip in dict.fromkeys(r.clip for r in rows + list(references.values())):
    if clip in references:
      ordered.append(references[clip])
    ordered += [r for r in rows if r.clip == clip]
  return ordered, datasets


def _load(workdir: str) -> tuple[dict, dict | None, str]:
  """(config.json or {}, {method: {dataset: top-1}} or None, a note if unreadable)."""
  try:
    config = _read_json(os.path.join(workdir, "config.json")) or {}
  except (OSError, ValueError, tf.errors.OpError):
    config = {}  # the table still shows the results; the group is then unknown
  try:
    raw = _read_json(os.path.join(workdir, "results.json"))
    if raw is None:
      return config, None, ""
    if all(isinstance(v, dict) and "top1" in v for v in raw.values()):
      raw = {"clip": raw}  # a zeroshot_eval run: {dataset: metrics}, CLIP alone
    return config, {method: {d: float(r["top1"]) for d, r in per.items()}
                    for method, per in raw.items()}, ""
  except (OSError, ValueError, KeyError, TypeError, AttributeError, tf.errors.OpError) as e:
    return config, None, f"results.json unreadable ({type(e).__name__}: {e})"


def _missing_note(name: str, workdir: str, config: dict, failed: dict) -> str:
  """Why a run has no results.json (only used when it has none)."""
  if name in failed:
    return f"failed (exit status {failed[name]}); see its log"
  if config:
    return "no results.json: still running, or failed (see its log)"
  if tf.io.gfile.exists(workdir):
    return "no results.json and no config.json"
  return f"not run ({workdir} does not exist)"


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|")


def markdown(rows: list[Row], datasets: list[str]) -> str:
  """The table: top-1 % per dataset with one decimal, a mean, a note column.

  The mean is over the datasets the row has; when it lacks some of the
  table's columns it says over how many, e.g. "61.2 (10/12)".
  """
  lines = ["| run | method | " + " | ".join(_cell(d) for d in datasets) + " | mean | note |",
           "| --- | --- | " + " | ".join("---:" for _ in datasets) + " | ---: | --- |"]
  for r in rows:
    values = [r.top1[d] for d in datasets if d in r.top1]
    if not values:
      mean = _MISSING
    else:
      mean = f"{statistics.fmean(values):.1f}"
      if len(values) < len(datasets):
        mean += f" ({len(values)}/{len(datasets)})"
    cells = [f"{r.top1[d]:.1f}" if d in r.top1 else _MISSING for d in datasets]
    lines.append(f"| {_cell(r.run)} | {_cell(r.method)} | " + " | ".join(cells) +
                 f" | {mean} | {_cell(r.note)} |")
  return "\n".join(lines) + "\n"


def write_table(root: str, expected: list[GridRun], failed: dict | None = None) -> str:
  """Collects, prints and atomically writes <root>/results.md; returns the text."""
  rows, datasets = collect(root, expected, failed)
  text = markdown(rows, datasets)
  print(text, end="", flush=True)
  io_utils.atomic_write_bytes(os.path.join(root, "results.md"), text.encode("utf-8"))
  print(f"wrote {os.path.join(root, 'results.md')}", flush=True)
  return text


def main(argv):
  overrides = argv[1:]
  bad = [a for a in overrides if not a.startswith("--config.")]
  if bad:
    raise usage_error(f"only --config.FIELD=VALUE overrides may follow '--'; got {bad}.")
  if FLAGS.tpu and not (FLAGS.zone and FLAGS.accelerator):
    raise usage_error("--tpu needs --zone and --accelerator.")
  root = FLAGS.root if "://" in FLAGS.root else os.path.abspath(FLAGS.root)
  runs = grid(FLAGS.vision, FLAGS.clips, FLAGS.regimes, FLAGS.methods, FLAGS.t2c_solvers)
  if FLAGS.collect_only and not any(FLAGS[f].present for f in _GRID_FLAGS):
    runs = []  # no grid named: tabulate what is there
  failed = {}
  if not FLAGS.collect_only:
    for i, run in enumerate(runs):
      cmd = command(run, root, overrides)
      if FLAGS.dry_run:
        print(" ".join(cmd))
        continue
      if not FLAGS.rerun and tf.io.gfile.exists(os.path.join(root, run.name, "results.json")):
        print(f"[{i + 1}/{len(runs)}] {run.name}: has results.json, skipped", flush=True)
        continue
      print(f"[{i + 1}/{len(runs)}] {run.name}: {' '.join(cmd)}", flush=True)
      status = subprocess.run(cmd, cwd=ROOT, check=False).returncode
      if status:
        failed[run.name] = status
        print(f"[{i + 1}/{len(runs)}] {run.name}: FAILED (exit status {status}); going on",
              flush=True)
    if FLAGS.dry_run:
      return 0
  write_table(root, runs, failed)
  return 1 if failed else 0


if __name__ == "__main__":
  flags.mark_flag_as_required("root")
  app.run(main)
