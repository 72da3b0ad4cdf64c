"""The language of the world's VL tasks: questions, statements and choices about a scene.

Everything said is decided by the scene's facts (shape, colour, size, centre,
background) in the world's own words, except SNLI-VE's neutral hypotheses
(undecidable by design). `text(task, scene, rng, index)` gives one example's
text; `world/vl_files.py` writes it in the datasets' formats. An example's
scene and text come from one generator keyed by (seed, task, split, index):
see `scene`.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from zoomshot_jax.world import render

TASKS = ("vqa", "snli_ve", "vcr")
TASK_IDS = {"vqa": 0, "snli_ve": 1, "vcr": 2}
# Half the scenes hold two objects: counts are balanced between 1 and 2, and
# left/right questions have scenes to be asked about.
TWO_OBJECTS_FRACTION = 0.5
NUM_HUMANS = 10          # VQA v2 collects 10 answers per question
# Each human answer is wrong with this probability, at most MAX_NOISY per
# question: the true answer keeps >= 7 votes (soft target 1.0), wrong ones
# get partial targets (0.3, 0.6) as real annotator disagreement does.
NOISE_RATE = 0.1
MAX_NOISY = 3
# Left/right is asked only for centres this far apart (fraction of the side),
# VCR's quadrants for a centre this far from both midlines: closer ones are
# decided by the scene but not visible at 32 px.
SIDE_MARGIN = 0.1
QUADRANT_MARGIN = 0.06
_NUMBER_WORDS = ("zero", "one", "two", "three", "four")
_COUNTS = ("0", "1", "2", "3")      # VQA count answers; "3" only as a noisy human's

# All fixed wording is here, so that `vocabulary()` can list it.

_VQA = {
    "colour": "what colour is {ref}?",
    "shape": "what shape is {ref}?",
    "size": ("is {ref} small or large?", "how big is {ref}?"),
    "count": "how many objects are there?",
    "count_value": "how many {noun} are there?",
    "exists": "is there {a} {colour} {shape}?",
    "side": "is {ref} on the left or the right?",
}
_SNLI = {
    "exists": "there is {a} {d}",
    "is": "{ref} is {value}",
    "one": "there is only one object",
    "two": "there are two objects",
    "side": "{ref} is on the {side}",
    "background": "the background is {background}",
}
# Statements about what the world does not model: a scene is fully given by
# its objects' shape, colour, size, position and rotation and its background,
# so authorship, material, weight, time of day and intentions are neither
# shown nor ruled out by the picture. {d} is a true description of an object
# in it, so that a neutral hypothesis is not told apart by naming an absent one.
_NEUTRAL = (
    "the {d} was drawn by a child",
    "the {d} is made of metal",
    "the picture was taken in the morning",
    "the {d} is heavy",
    "someone is about to move the {d}",
    "the {d} is a gift for a friend",
)
# VCR token templates: "{obj}" takes a list of object indices, other slots one word.
_VCR = {
    "colour": ("What colour is {obj} ?", "{obj} is {colour} .", "{obj} is filled with {colour}"),
    "position": ("Where is {obj} ?", "{obj} is at the {vert} on the {side} .",
                 "The centre of {obj} is in the {vert} {side} quarter"),
    "count": ("How many objects are in the picture ?", "There {verb} {number} {noun} .",
              ("Only {obj} is in the picture", "{obj} are in the picture")),
}
# Every rationale is the answer's evidence plus two facts the answer does not
# state (size, background): the 4 combinations are the choices, all consistent
# with the right answer and exactly one true, so QA->R needs the picture.
_VCR_TAIL = ", and {subject} is {size} on a {background} background ."
_VCR_KINDS = ("colour", "position", "count")


def _a(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
  return shape + ("es" if shape.endswith("s") else "s")


def _sentence(text: str) -> str:
  return text[0].upper() + text[1:]


def _words(text: str) -> list[str]:
  # The word-level tokenizer's split (demo/tokenizer.py: HF's Whitespace).
  return re.findall(r"\w+|[^\w\s]+", text.lower())


def vocabulary() -> list[str]:
  """Every word the three tasks' text can contain (lower-cased, punctuation
  split off as the world's word-level tokenizer splits it), VCR object tags
  ("star1", "star2") and the world's caption words included; sorted."""

  def strings(x):
    return [x] if isinstance(x, str) else [s for y in x for s in strings(y)]

  text = " ".join(strings([*_VQA.values(), *_SNLI.values(), _NEUTRAL, *_VCR.values(),
                           _VCR_TAIL]))
  words = set(_words(re.sub(r"\{\w+\}", " ", text)))
  words.update(render.vocabulary(), render.SHAPES, map(_plural, render.SHAPES),
               render.COLOUR_NAMES, render.SIZES, render.BACKGROUNDS, _NUMBER_WORDS, _COUNTS,
               ("a", "an", "the", "object", "on", "left", "right", "top", "bottom", "yes", "no",
                "is", "are", "only", "objects"))
  words.update(f"{s}{k}" for s in render.SHAPES for k in (1, 2))
  return sorted(words)


# ---------------------------------------------------------------- scene facts


def split_key(split_name: str) -> int:
  """The split's entry in an example's seed (crc32: stable across processes,
  unlike hash())."""
  return zlib.crc32(split_name.encode("utf-8"))


def scene(task: str, seed: int, split_name: str, index: int
          ) -> tuple[render.Scene, np.random.Generator]:
  """The scene of an example and its generator, positioned where the text starts."""
  rng = np.random.default_rng([seed, TASK_IDS[task], split_key(split_name), index])
  return render.sample_scene(rng, TWO_OBJECTS_FRACTION), rng


def _side(s: render.Scene, i: int) -> str | None:
  """"left" or "right": object i relative to the other; None with one object or
  centres closer than SIDE_MARGIN."""
  if len(s.objects) != 2:
    return None
  a, b = s.objects[i], s.objects[1 - i]
  if abs(a.x - b.x) < SIDE_MARGIN:
    return None
  return "left" if a.x < b.x else "right"


def _quadrant(o: render.Obj) -> tuple[str, str] | None:
  """(vertical, horizontal) half of the image holding the centre; y points down."""
  if min(abs(o.x - 0.5), abs(o.y - 0.5)) < QUADRANT_MARGIN:
    return None
  return ("top" if o.y < 0.5 else "bottom"), ("left" if o.x < 0.5 else "right")


def _facts(s: render.Scene, i: int) -> dict[str, str | None]:
  o = s.objects[i]
  return {"shape": render.SHAPES[o.shape], "colour": render.COLOUR_NAMES[o.colour],
          "size": render.SIZES[o.size], "side": _side(s, i)}


# Attribute sets tried in order, shortest first; the first that fits object i
# alone names it. (colour, shape) always does: a scene's classes differ.
_REFERENCES = (("shape",), ("colour",), ("size", "shape"), ("size", "colour"),
               ("colour", "shape"), ("shape", "side"), ("colour", "side"))


def _refer(s: render.Scene, i: int, avoid: str) -> str | None:
  """"the star", "the red object", "the large star", "the star on the left": the
  shortest phrase that names object i alone without the attribute `avoid`
  (the one asked about); None if there is none."""
  mine = _facts(s, i)
  others = [_facts(s, j) for j in range(len(s.objects)) if j != i]
  for keys in _REFERENCES:
    if avoid in keys or any(mine[k] is None for k in keys):
      continue
    if all(any(o[k] != mine[k] for k in keys) for o in others):
      words = ["the"] + [mine[k] for k in ("size", "colour") if k in keys]
      words.append(mine["shape"] if "shape" in keys else "object")
      if "side" in keys:
        words += ["on", "the", mine["side"]]
      return " ".join(words)
  return None


def _describe(s: render.Scene, i: int, rng: np.random.Generator) -> str:
  """A true description of object i: colour and shape, with its size at random."""
  f = _facts(s, i)
  return " ".join(([f["size"]] if rng.integers(2) else []) + [f["colour"], f["shape"]])


def _absent_class(s: render.Scene, rng: np.random.Generator) -> tuple[str, str]:
  """(colour, shape) of no object in the scene, sharing the colour or the shape
  of one that is, so that the words alone do not tell it is absent."""
  o = s.objects[int(rng.integers(len(s.objects)))]
  present = {(p.colour, p.shape) for p in s.objects}
  if rng.integers(2):
    options = [(o.colour, k) for k in range(len(render.SHAPES))]
  else:
    options = [(k, o.shape) for k in range(len(render.COLOUR_NAMES))]
  options = [c for c in options if c not in present]
  colour, shape = options[int(rng.integers(len(options)))]
  return render.COLOUR_NAMES[colour], render.SHAPES[shape]


def _other(values, value, rng: np.random.Generator) -> str:
  wrong = [v for v in values if v != value]
  return wrong[int(rng.integers(len(wrong)))]


# ---------------------------------------------------------------------- VQA


def _vqa_items(s: render.Scene, rng: np.random.Generator, index: int) -> list[dict]:
  """The questions about a scene: question, answer, types and the answers a
  noisy human may give instead."""
  n = len(s.objects)
  items = []

  def add(question, answer, question_type, answer_type, space):
    items.append(dict(question=_sentence(question), answer=answer, question_type=question_type,
                      answer_type=answer_type, space=space))

  for attr, values in (("colour", render.COLOUR_NAMES), ("shape", render.SHAPES)):
    i = int(rng.integers(n))
    ref = _refer(s, i, attr)
    if ref:   # None only for two same-shaped objects of one size, side by side
      add(_VQA[attr].format(ref=ref), _facts(s, i)[attr], f"what {attr} is the", "other", values)
  i = int(rng.integers(n))
  phrasing = int(rng.integers(2))
  add(_VQA["size"][phrasing].format(ref=_refer(s, i, "size")), _facts(s, i)["size"],
      ("is the", "how big is the")[phrasing], "other", render.SIZES)
  add(_VQA["count"], str(n), "how many", "number", _COUNTS)
  # Half the time a value some object has (count 1 or 2), half one none has (0).
  attr = "colour" if rng.integers(2) else "shape"
  values = render.COLOUR_NAMES if attr == "colour" else render.SHAPES
  present = [_facts(s, j)[attr] for j in range(n)]
  if rng.integers(2):
    value = present[int(rng.integers(n))]
  else:
    absent = [v for v in values if v not in present]
    value = absent[int(rng.integers(len(absent)))]
  noun = f"{value} objects" if attr == "colour" else _plural(value)
  add(_VQA["count_value"].format(noun=noun), str(present.count(value)), "how many", "number",
      _COUNTS)
  # Parity rather than a coin: any run of consecutive images is balanced exactly.
  if index % 2 == 0:
    f = _facts(s, int(rng.integers(n)))
    colour, shape, answer = f["colour"], f["shape"], "yes"
  else:
    (colour, shape), answer = _absent_class(s, rng), "no"
  add(_VQA["exists"].format(a=_a(colour), colour=colour, shape=shape), answer, "is there a",
      "yes/no", ("yes", "no"))
  i = int(rng.integers(n))
  side = _side(s, i)
  if side:
    add(_VQA["side"].format(ref=_refer(s, i, "side")), side, "is the", "other",
        ("left", "right"))
  return items


def _human_answers(item: dict, rng: np.random.Generator) -> list[dict]:
  """10 human answers: the true one, a few replaced by wrong ones (NOISE_RATE)."""
  answers = [item["answer"]] * NUM_HUMANS
  noisy = min(MAX_NOISY, int(rng.binomial(NUM_HUMANS, NOISE_RATE)))
  for slot in rng.choice(NUM_HUMANS, size=noisy, replace=False):
    answers[slot] = _other(item["space"], item["answer"], rng)
  return [{"answer_id": k + 1, "answer": a,
           "answer_confidence": "yes" if a == item["answer"] else "maybe"}
          for k, a in enumerate(answers)]


def _vqa_text(s: render.Scene, rng: np.random.Generator, index: int) -> list[dict]:
  items = _vqa_items(s, rng, index)
  for item in items:
    item["answers"] = _human_answers(item, rng)
  return items


# ------------------------------------------------------------------ SNLI-VE


def _statements(s: render.Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
  """(true, false) statements about the scene, one pair per kind of fact."""
  n = len(s.objects)
  i = int(rng.integers(n))
  colour, shape = _absent_class(s, rng)
  wrong = " ".join(([render.SIZES[int(rng.integers(2))]] if rng.integers(2) else [])
                   + [colour, shape])
  true = _describe(s, i, rng)
  pairs = [(_SNLI["exists"].format(a=_a(true), d=true),
            _SNLI["exists"].format(a=_a(wrong), d=wrong))]
  i = int(rng.integers(n))
  f = _facts(s, i)
  for attr, values in (("colour", render.COLOUR_NAMES), ("size", render.SIZES)):
    ref = _refer(s, i, attr)
    if ref:
      pairs.append((_SNLI["is"].format(ref=ref, value=f[attr]),
                    _SNLI["is"].format(ref=ref, value=_other(values, f[attr], rng))))
  pairs.append((_SNLI["one"], _SNLI["two"]) if n == 1 else (_SNLI["two"], _SNLI["one"]))
  if f["side"]:
    ref = _refer(s, i, "side")
    pairs.append((_SNLI["side"].format(ref=ref, side=f["side"]),
                  _SNLI["side"].format(ref=ref, side=_other(("left", "right"), f["side"], rng))))
  bg = render.BACKGROUNDS[s.background]
  pairs.append((_SNLI["background"].format(background=bg),
                _SNLI["background"].format(background=_other(render.BACKGROUNDS, bg, rng))))
  return pairs


def _snli_text(s: render.Scene, rng: np.random.Generator, index: int) -> dict:
  """A caption (the premise) and one hypothesis per label: balanced exactly."""
  del index
  caption = render.captions(s, rng, 1)[0]
  pairs = _statements(s, rng)
  entailment = pairs[int(rng.integers(len(pairs)))][0]
  contradiction = pairs[int(rng.integers(len(pairs)))][1]
  neutral = _NEUTRAL[int(rng.integers(len(_NEUTRAL)))].format(
      d=_describe(s, int(rng.integers(len(s.objects))), rng))
  return {"caption": _sentence(caption) + ".", "hypotheses": [
      (label, _sentence(h) + ".") for label, h in
      (("entailment", entailment), ("neutral", neutral), ("contradiction", contradiction))]}


# ---------------------------------------------------------------------- VCR


def _tokens(template: str, **slots) -> list:
  """A VCR token list: "{obj}" becomes an index list, other slots one word each."""
  out = [slots[w[1:-1]] if w.startswith("{") and w.endswith("}") else w
         for w in template.split()]
  if isinstance(out[0], str):
    out[0] = _sentence(out[0])
  return out


def _shuffled(candidates: list, rng: np.random.Generator) -> tuple[list, int]:
  """(choices, label): the candidates in a seeded order; candidates[0] is right."""
  order = rng.permutation(len(candidates))
  return [candidates[k] for k in order], int(np.flatnonzero(order == 0)[0])


def _vcr_text(s: render.Scene, rng: np.random.Generator, index: int) -> dict:
  """One question (kind cycled by index, for balance), 4 answers, 4 rationales."""
  n = len(s.objects)
  kind = _VCR_KINDS[index % len(_VCR_KINDS)]
  i = int(rng.integers(n))
  if kind == "position":
    placed = [j for j in range(n) if _quadrant(s.objects[j])]
    if placed:
      i = placed[int(rng.integers(len(placed)))]
    else:
      kind = "colour"
  question_t, answer_t, evidence_t = _VCR[kind]
  f = _facts(s, i)
  obj = [i]
  if kind == "colour":
    wrong = [c for c in render.COLOUR_NAMES if c != f["colour"]]
    picks = rng.choice(len(wrong), 3, replace=False)
    answers = [_tokens(answer_t, obj=obj, colour=c)
               for c in [f["colour"], *(wrong[k] for k in picks)]]
    evidence = _tokens(evidence_t, obj=obj, colour=f["colour"])
  elif kind == "position":
    vert, side = _quadrant(s.objects[i])
    quadrants = [(vert, side)] + [(v, h) for v in ("top", "bottom") for h in ("left", "right")
                                  if (v, h) != (vert, side)]
    answers = [_tokens(answer_t, obj=obj, vert=v, side=h) for v, h in quadrants]
    evidence = _tokens(evidence_t, obj=obj, vert=vert, side=side)
  else:
    counts = [n] + [k for k in (1, 2, 3, 4) if k != n]
    answers = [_tokens(answer_t, verb="is" if k == 1 else "are", number=_NUMBER_WORDS[k],
                       noun="object" if k == 1 else "objects") for k in counts]
    evidence = _tokens(evidence_t[n - 1], obj=list(range(n)))
  bg = render.BACKGROUNDS[s.background]
  facts = [(f["size"], bg)] + [(z, b) for z in render.SIZES for b in render.BACKGROUNDS
                               if (z, b) != (f["size"], bg)]
  rationales = [evidence + _tokens(_VCR_TAIL, subject=obj, size=z, background=b)
                for z, b in facts]
  answer_choices, answer_label = _shuffled(answers, rng)
  rationale_choices, rationale_label = _shuffled(rationales, rng)
  return {"kind": kind, "objects": [render.SHAPES[o.shape] for o in s.objects],
          "question": _tokens(question_t, obj=obj),
          "answer_choices": answer_choices, "answer_label": answer_label,
          "rationale_choices": rationale_choices, "rationale_label": rationale_label}


_TEXT = {"vqa": _vqa_text, "snli_ve": _snli_text, "vcr": _vcr_text}


def text(task: str, s: render.Scene, rng: np.random.Generator, index: int):
  """One example's text, drawn from `rng` (left where `scene` left it).

  Returns:
    vqa: [{"question", "answer", "question_type", "answer_type", "answers"
      (10 VQA answer dicts), "space"}]; snli_ve: {"caption", "hypotheses":
      [(label, sentence)] one per label}; vcr: {"kind", "objects", "question",
      "answer_choices", "answer_label", "rationale_choices", "rationale_label"}
      (VCR token lists).
  """
  return _TEXT[task](s, rng, index)
