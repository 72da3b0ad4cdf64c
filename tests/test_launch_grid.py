"""launch/zoomshot_grid.py: the results table from fake run directories."""

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B32 = "openai/clip-vit-base-patch32"


def _load_grid():
  # launch/ is not a package; load the script once (it defines absl flags),
  # with launch/ on the path as `python launch/zoomshot_grid.py` has it.
  name = "zoomshot_grid_under_test"
  if name not in sys.modules:
    if os.path.join(ROOT, "launch") not in sys.path:
      sys.path.insert(0, os.path.join(ROOT, "launch"))
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "launch", "zoomshot_grid.py"))
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
  return sys.modules[name]


grid = _load_grid()


def _metrics(top1):
  return {"top1": top1, "top5": 99.0, "num_examples": 10_000}


def _fake_run(root, name, method, results=None):
  """A workdir as the zoomshot program leaves it (results=None: no results.json)."""
  os.makedirs(root / name)
  config = {"program": "zoomshot", "zoomshot": {"method": method}, "clip": B32,
            "evals": {"zeroshot": {"type": "zeroshot_classification",
                                   "datasets": "cifar10,cifar100"}}}
  (root / name / "config.json").write_text(json.dumps(config))
  if results is not None:
    (root / name / "results.json").write_text(json.dumps(
        {who: {d: _metrics(v) for d, v in per.items()} for who, per in results.items()}))


def _two_runs(root):
  clip = {"cifar10": 89.0, "cifar100": 64.2}
  _fake_run(root, "zoomshot-dinov2_b14-b32-20pct", "zoomshot",
            {"zoomshot": {"cifar10": 91.2, "cifar100": 68.4}, "clip": clip})
  _fake_run(root, "t2c-dinov2_b14-b32-reference", "text_to_concept",
            {"text_to_concept": {"cifar10": 88.0, "cifar100": 60.4}, "clip": clip})


def _expected_runs(regimes):
  return grid.grid(["dinov2_b14"], ["b32"], regimes, ["zoomshot", "text_to_concept"],
                   ["reference"])


def test_table_of_two_runs_is_exact_and_written(tmp_path):
  _two_runs(tmp_path)
  text = grid.write_table(str(tmp_path), _expected_runs(["20pct"]))
  # By hand: one decimal; means (91.2+68.4)/2, (88.0+60.4)/2, (89.0+64.2)/2;
  # the CLIP reference once, first in its group; rows in grid order.
  assert text == (
      "| run | method | cifar10 | cifar100 | mean | note |\n"
      "| --- | --- | ---: | ---: | ---: | --- |\n"
      "| openai/clip-vit-base-patch32 | clip | 89.0 | 64.2 | 76.6 |  |\n"
      "| zoomshot-dinov2_b14-b32-20pct | zoomshot | 91.2 | 68.4 | 79.8 |  |\n"
      "| t2c-dinov2_b14-b32-reference | text_to_concept | 88.0 | 60.4 | 74.2 |  |\n")
  assert (tmp_path / "results.md").read_text() == text
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left


def test_missing_results_are_rows_with_notes(tmp_path):
  _two_runs(tmp_path)
  _fake_run(tmp_path, "zoomshot-dinov2_b14-b32-1pct_20ep", "zoomshot")   # started only
  rows, datasets = grid.collect(str(tmp_path), _expected_runs(["20pct", "1pct_20ep"]))
  text = grid.markdown(rows, datasets).splitlines()
  assert text[4] == ("| zoomshot-dinov2_b14-b32-1pct_20ep | zoomshot | — | — | — | "
                     "no results.json: still running, or failed (see its log) |")
  # A run of the grid with no directory at all, and one that failed just now.
  rows, datasets = grid.collect(str(tmp_path / "empty"), _expected_runs(["20pct"]),
                                failed={"zoomshot-dinov2_b14-b32-20pct": 2})
  notes = {r.run: r.note for r in rows}
  assert notes["zoomshot-dinov2_b14-b32-20pct"] == "failed (exit status 2); see its log"
  assert notes["t2c-dinov2_b14-b32-reference"].startswith("not run (")


def test_incomplete_row_says_over_how_many_datasets(tmp_path):
  _two_runs(tmp_path)
  _fake_run(tmp_path, "zoomshot-vit_b16-b32-20pct", "zoomshot",
            {"zoomshot": {"cifar10": 70.0}})
  rows, datasets = grid.collect(str(tmp_path), [])
  line = [l for l in grid.markdown(rows, datasets).splitlines() if "vit_b16" in l]
  assert line == ["| zoomshot-vit_b16-b32-20pct | zoomshot | 70.0 | — | 70.0 (1/2) |  |"]
