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
  if summary.get("distillation"):
    lines.append(distill_table(summary))
  if summary.get("vl"):
    lines.append(vl_table(summary))
  lines.append(provenance(summary))
  t = summary["timings_s"]
  lines.append("Time: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()))
  return "\n".join(lines)


def chart_png(summary: dict) -> bytes:
  """A horizontal bar chart of top-1 accuracy per row, as PNG bytes."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")  # no display needed
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  d = summary.get("distillation") or {}
  size = (f", {d['params']['student'] / 1000:.0f}k params" if d.get("params") else "")
  data = rows(summary) + [
      (f"{label}{'' if label == 'CLIP teacher' else size} [photo test]", photo, None)
      for label, _, photo in distill_rows(summary)]
  vl = vl_bars(summary)
  labels = [r[0] for r in data + vl][::-1]
  values = [r[1] for r in data + vl][::-1]
  fig, ax = plt.subplots(figsize=(8, 0.55 * len(labels) + 1.2), dpi=100)
  colours = (["#ff7f0e"] * len(vl) + ["#9e9e9e" if l == "chance" else "#1f77b4"
                                      for l in labels[len(vl):]])
  bars = ax.barh(labels, values, color=colours)
  ax.bar_label(bars, fmt="%.1f", padding=3)
  ax.set_xlim(0, 105)
  ax.set_xlabel("top-1 accuracy (%)" + ("\norange: the VL task's metric (%)" if vl else ""))
  ax.set_title(f"Zero-shot on {summary['world']['dataset']} ({summary['num_classes']} classes)")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  return buf.getvalue()


DISTILL_LABELS = {"l2": "student, feature distillation (l2)",
                  "i2i": "student, image-image InfoNCE (i2i)",
                  "contrastive": "student, vision-language (contrastive)"}


def distill_rows(summary: dict) -> list[tuple[str, float, float]]:
  """(label, clean top-1 %, photo top-1 %): the teacher, then each student."""
  d = summary.get("distillation")
  if not d:
    return []
  out = [("CLIP teacher", d["teacher"]["clean"]["top1"], d["teacher"]["photo"]["top1"])]
  for loss in d["losses"]:   # the config's order (results.json sorts its keys)
    r = d["rows"][loss]
    out.append((DISTILL_LABELS.get(loss, loss), r["clean"]["top1"], r["photo"]["top1"]))
  return out


def distill_table(summary: dict) -> str:
  d = summary.get("distillation")
  if not d:
    return ""
  p = d["params"]
  lines = [f"Feature distillation: a {d['student']} student ({p['student']:,} parameters, "
           f"{100 * p['ratio']:.0f}% of the teacher's image tower) trained on {d['images']:,} "
           "synthetic clean images rendered from prompts; zero-shot top-1 %:",
           f"{'':44s} {'clean':>8s} {'photo':>8s} {'photo/teacher':>14s}"]
  teacher_photo = d["teacher"]["photo"]["top1"]
  for label, clean, photo in distill_rows(summary):
    share = (f"{100 * photo / teacher_photo:13.1f}%" if teacher_photo and
             label != "CLIP teacher" else f"{'-':>14s}")
    lines.append(f"{label:44s} {clean:8.2f} {photo:8.2f} {share}")
  return "\n".join(lines)


TASK_NAMES = {"vqa": "VQA", "snli_ve": "SNLI-VE", "vcr": "VCR"}
# (key in the evaluator's metrics, label) per task; the table adds VQA's per
# answer type rows after its accuracy. The chart shows one metric per task.
VL_METRICS = {"vqa": (("overall", "accuracy"),), "snli_ve": (("accuracy", "accuracy"),),
              "vcr": (("q2a", "Q→A"), ("qa2r", "QA→R"), ("q2ar", "Q→AR"))}
VL_CHART = {"vqa": "overall", "snli_ve": "accuracy", "vcr": "q2ar"}


def _percent(regime: str) -> str:
  """"low1" -> "1%", "full" -> "100%" (configs/vl_finetune.py's regimes)."""
  return f"{regime[3:]}%" if regime.startswith("low") else "100%"


def vl_rows(summary: dict) -> list[tuple[str, str, list[float], float]]:
  """(task, metric label, [value per method], text-only reference) per task and
  metric, in config.vl.tasks' order; % on the val split."""
  v = summary.get("vl")
  if not v:
    return []
  out = []
  for task in v["tasks"]:
    got, ref = v["rows"][task], v["references"][task]
    for key, label in VL_METRICS[task]:
      out.append((task, label, [got[m][key] for m, _ in v["methods"]], ref[key]))
    if task == "vqa":
      for kind in sorted(ref["per_answer_type"]):
        out.append((task, f"  {kind}", [got[m]["per_answer_type"][kind] for m, _ in v["methods"]],
                    ref["per_answer_type"][kind]))
  return out


def vl_table(summary: dict) -> str:
  v = summary.get("vl")
  if not v:
    return ""
  methods = [label for _, label in v["methods"]]
  widths = [max(9, len(m)) for m in methods]
  how = (" without CLIP and with CLIP-TD (the teacher: the CLIP above)," if any(
      k == "clip_td" for k, _ in v["methods"]) else ", no CLIP,")
  lines = [f"VL tasks: the {v['student']} VL student{how} fine-tuned on "
           f"{_percent(v['regime'])} of the world's training examples ({v['regime']}; "
           f"the train column), one seed ({v['seed']}); each task's metric (%) on the val "
           "split (the val column):",
           f"{'':28s} {'train':>6s} {'val':>6s} "
           + " ".join(f"{m:>{w}s}" for m, w in zip(methods, widths)) + f" {'text-only':>10s}"]
  for task, label, values, ref in vl_rows(summary):
    sub = label.startswith(" ")   # a VQA answer type: the sizes are its task's
    sizes = ("" if sub else f"{v['train_examples'][task]:6,d} "
             f"{v['rows'][task][v['methods'][0][0]]['num_examples']:6,d}")
    name = label if sub else f"{TASK_NAMES[task]}, {label}"
    lines.append(f"{name:28s} {sizes:13s} "
                 + " ".join(f"{x:{w}.2f}" for x, w in zip(values, widths)) + f" {ref:10.2f}")
  answer = v["references"].get("vqa", {}).get("answer")
  notes = {"vqa": f"VQA: the training examples' most common answer ({answer!r}) to every "
                  "question",
           "snli_ve": "SNLI-VE: the training examples' most common label", "vcr": "VCR: chance"}
  lines.append("  text-only: " + "; ".join(notes[t] for t in v["tasks"]) + ".")
  return "\n".join(lines)


def vl_bars(summary: dict) -> list[tuple[str, float, None]]:
  """The chart's VL bars: each method's headline metric per task."""
  v = summary.get("vl")
  if not v:
    return []
  pct = _percent(v["regime"])
  return [(f"{label}, {TASK_NAMES[task]} {dict(VL_METRICS[task])[VL_CHART[task]]}, {pct} [val]",
           v["rows"][task][m][VL_CHART[task]], None)
          for task in v["tasks"] for m, label in v["methods"]]


def provenance(summary: dict) -> str:
  """Which models the table is of: the shipped checkpoints or trained here."""
  m = summary["models"]
  if m.get("source") == "shipped":
    s = m["shipped"]
    return (f"Models: shipped with the package (CLIP {s['clip']['steps']:,} steps on "
            f"{'+'.join(s['clip']['renderers'])} captions, ResNet {s['vision']['steps']:,} "
            f"steps; trained by {s['trained_by']}); --config.models=retrain trains them here.")
  return "Models: trained in this workdir (config.models='retrain')."


def paths(workdir: str, summary: dict) -> str:
  """The printed lines saying where the chart and the trained models are (the
  binary adds results.json and the log)."""
  models = summary["models"]
  return (f"Chart: {os.path.join(workdir, 'results.png')}\n"
          f"Model files: {models['clip']} (CLIP), {models['vision']} (vision encoder)")


def write(workdir: str, summary: dict) -> None:
  """results.json, results.png (both written to a temp name, then renamed), and
  prints the table and the paths."""
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"), summary)
  io_utils.atomic_write_bytes(os.path.join(workdir, "results.png"), chart_png(summary))
  console.echo(table(summary))
  console.echo(paths(workdir, summary))
