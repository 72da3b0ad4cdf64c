"""Prompts for a text-to-image model: per-class attributes combined pairwise.

The reference (METHODS.md §4) has an LLM propose 5-15 values for each of four
attributes per class (location, time of day, camera angle, and a domain one),
and combines them with a *pairwise covering array*: every pair of values of
any two attributes occurs in at least one prompt, far fewer than the full
product (4 attributes x 15 values: 265 prompts instead of 50,625; x 5: 30).
The covering array is allpairspy's, the reference's library.

Attributes file (JSON; ours):
  {"template": "a photo of a {cls} ({super}, pet), {location}, {daytime}, {position}, {angle}",
   "super": "pet",                                  # optional, fills {super}
   "attributes": {"location": [...], "daytime": [...], ...},   # for every class
   "classes": {"Abyssinian": {"super": "cat", "attributes": {"position": [...]}}}}
`classes` is optional (class names may come from a list instead); a class's
own attributes replace the shared ones of the same name. Output: one JSON
object per line, {"class", "index", "prompt", "attributes"}, the input of any
text-to-image model (write images/<class>/<index>.png, captions beside them).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence

from zoomshot_jax import io_utils
from zoomshot_jax.errors import UserError


def covering_array(values: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
  """Rows covering every pair of values of any two columns (all rows for < 2 columns)."""
  if len(values) < 2:
    return [(v,) for v in values[0]] if values else [()]
  from allpairspy import AllPairs  # pylint: disable=g-import-not-at-top
  return [tuple(row) for row in AllPairs([list(v) for v in values])]


def _fields(template: str) -> list[str]:
  return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def class_attributes(spec: dict, name: str) -> tuple[str, dict[str, list[str]]]:
  """(super-category, {attribute: values}) of one class."""
  own = spec.get("classes", {}).get(name, {})
  attrs = {**spec.get("attributes", {}), **own.get("attributes", {})}
  return own.get("super", spec.get("super", "")), attrs


def build(spec: dict, classnames: Sequence[str] | None = None, where: str = "attributes") -> list[dict]:
  """Every class's prompts: [{"class", "index", "prompt", "attributes"}]."""
  template = spec.get("template")
  if not template or "{cls}" not in template:
    raise UserError(f"{where}: 'template' must be a string with a {{cls}} field, e.g. "
                    "\"a photo of a {cls}, {location}\".")
  names = list(classnames or spec.get("classes", {}))
  if not names:
    raise UserError(f"{where}: no classes; give a 'classes' object or a class-name list.")
  rows = []
  for name in names:
    sup, attrs = class_attributes(spec, name)
    need = [f for f in _fields(template) if f not in ("cls", "super")]
    missing = [f for f in need if f not in attrs]
    if missing:
      raise UserError(f"{where}: the template uses {missing}, which class {name!r} has no "
                      f"values for (its attributes: {sorted(attrs)}).")
    empty = [f for f in need if not attrs[f]]
    if empty:
      raise UserError(f"{where}: class {name!r} has no values for {empty}.")
    for i, combo in enumerate(covering_array([attrs[f] for f in need])):
      chosen = dict(zip(need, combo))
      rows.append({"class": name, "index": i, "attributes": chosen,
                   "prompt": template.format(cls=name, super=sup, **chosen)})
  return rows


def counts(rows: list[dict]) -> dict[str, int]:
  out: dict[str, int] = {}
  for r in rows:
    out[r["class"]] = out.get(r["class"], 0) + 1
  return out


def write_jsonl(path: str, rows: list[dict]) -> None:
  io_utils.atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                            for r in rows).encode())


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
