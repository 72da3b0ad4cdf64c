"""The demo's table, results.json and bar chart."""

from __future__ import annotations

import io
import os

from zoomshot_jax import console, io_utils

# (results key, row label), in the order of the table.
ROWS = (
    ("clip", "CLIP teacher (ViT, trained on captions)"),
    ("text_to_concept", "vision encoder + Text-to-Concept"),
    ("zoomshot", "vision encoder + Zoom-shot"),
    ("asif", "ASIF (vision encoder + CLIP text tower)"),
)


def rows(summary: dict) -> list[tuple[str, float, float]]:
  """(label, top-1 %, top-5 %) for chance and every method that ran."""
  out = [("chance", summary["chance"]["top1"], summary["chance"]["top5"])]
  for key, label in ROWS:
    r = summary["results"].get(key)
    if r is not None:
      out.append((label, r["top1"], r["top5"]))
  return out


def table(summary: dict) -> str:
  """The printed table: accuracies and each row's share of the teacher's top-1."""
  teacher = summary["results"]["clip"]["top1"]
  n = summary["results"]["clip"]["num_examples"]
  lines = [f"Zero-shot, {summary['num_classes']}-way shape x colour, {n} held-out "
           f"{summary['world']['dataset']} test images, prompts unseen by the maps:",
           f"{'':44s} {'top-1 %':>8s} {'top-5 %':>8s} {'of teacher':>11s}"]
  for label, top1, top5 in rows(summary):
    share = (f"{100 * top1 / teacher:10.1f}%" if teacher and label != "chance"
             else f"{'-':>11s}")
    lines.append(f"{label:44s} {top1:8.2f} {top5:8.2f} {share}")
  held = {k: summary["results"][k].get("heldout") for k in ("text_to_concept", "zoomshot")}
  for k, h in held.items():
    if h:
      lines.append(f"  {k}: held-out R² {h['r2']:.3f}, top-1 agreement with CLIP "
                   f"{100 * h['agreement']:.1f}%")
  t = summary["timings_s"]
  lines.append("Time: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()))
  return "\n".join(lines)


def chart_png(summary: dict) -> bytes:
  """A horizontal bar chart of top-1 accuracy per row, as PNG bytes."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")  # no display needed
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  data = rows(summary)
  labels = [r[0] for r in data][::-1]
  values = [r[1] for r in data][::-1]
  fig, ax = plt.subplots(figsize=(8, 0.55 * len(data) + 1.2), dpi=100)
  colours = ["#9e9e9e" if l == "chance" else "#1f77b4" for l in labels]
  bars = ax.barh(labels, values, color=colours)
  ax.bar_label(bars, fmt="%.1f", padding=3)
  ax.set_xlim(0, 105)
  ax.set_xlabel("top-1 accuracy (%)")
  ax.set_title(f"Zero-shot on {summary['world']['dataset']} ({summary['num_classes']} classes)")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return buf.getvalue()


def paths(workdir: str, summary: dict) -> str:
  """The printed lines saying where the chart and the trained models are (the
  binary adds results.json and the log)."""
  models = summary["models"]
  return (f"Chart: {os.path.join(workdir, 'results.png')}\n"
          f"Models: {models['clip']} (CLIP), {models['vision']} (vision encoder)")


def write(workdir: str, summary: dict) -> None:
  """results.json, results.png (both written to a temp name, then renamed), and
  prints the table and the paths."""
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"), summary)
  io_utils.atomic_write_bytes(os.path.join(workdir, "results.png"), chart_png(summary))
  console.echo(table(summary))
  console.echo(paths(workdir, summary))
