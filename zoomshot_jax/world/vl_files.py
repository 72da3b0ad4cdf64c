"""The VL tasks in the demo world: VQA v2, SNLI-VE and VCR files made from its scenes.

No download: the writers draw the world's scenes, say things about them
(world/vl_text.py) and write the files in the real datasets' formats
(METHODS.md, "Data formats and metrics for the VL tasks"), so that
`zoomshot_jax.vl.readers` reads them and the task pipeline trains on them
unchanged:

  write_vqa      v2_OpenEnded_mscoco_{split}_questions.json,
                 v2_mscoco_{split}_annotations.json, {split}/COCO_{split}_{id:012d}.jpg
  write_snli_ve  snli_ve_{split}.jsonl, flickr30k_images/{split}_{index:06d}.jpg
  write_vcr      {split}.jsonl, vcr1images/{movie}/{movie}_{split}_{index:06d}.{jpg,json}
  write_all      the three tasks for several splits, into out_dir/{vqa,snli_ve,vcr};
  write_domain_shift  clean training data, and its test split again rendered
                 "photo": the world's domain shift (clean -> photo).

Every example is a pure function of (task, seed, split name, index) (see
vl_text.scene), so it does not depend on the others or on the process count,
and a split's clean and photo renderings hold the same scenes and text. Text
is drawn before pixels because the photo renderer draws more random numbers.
Files are written under a temporary name and renamed; a split's index file
(JSON/JSONL) last, so that once it exists every image it names does.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import sys
import uuid
import warnings

from zoomshot_jax.errors import UserError
from zoomshot_jax.world import render
from zoomshot_jax.world import vl_text
from zoomshot_jax.world.builder import IMAGE_SIZE

# Each task's file name for the generic splits of `write_all`, as the real
# datasets name them.
SPLIT_NAMES = {
    "vqa": {"train": "train2014", "val": "val2014", "test": "test2015"},
    "snli_ve": {"train": "train", "val": "dev", "test": "test"},
    "vcr": {"train": "train", "val": "val", "test": "test"},
}
NUM_MOVIES = 8
JPEG_QUALITY = 95
_SPLIT_RE = re.compile(r"[A-Za-z0-9_-]+")
# As world/builder.py: a pool only where it saves more than it costs.
_MIN_POOL_SIZE = 2000
_CHUNK_SIZE = 256


def _example(args: tuple) -> dict:
  """(task, seed, split_name, index, renderer, image_size) -> scene, text, JPEG
  bytes (a pool task: module-level; NumPy and PIL only)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  task, seed, split_name, index, renderer, image_size = args
  s, rng = vl_text.scene(task, seed, split_name, index)
  text = vl_text.text(task, s, rng, index)     # before the pixels (module docstring)
  buf = io.BytesIO()
  # 4:4:4 chroma: the default 4:2:0 would smear the objects' colours at 32 px.
  Image.fromarray(render.render(s, renderer, image_size, rng)).save(
      buf, format="jpeg", quality=JPEG_QUALITY, subsampling=0)
  return {"scene": s, "text": text, "jpeg": buf.getvalue()}


def _num_cpus() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _examples(task, seed, split_name, num_images, renderer, image_size):
  """The examples in index order, rendered in a pool for large splits."""
  tasks = ((task, seed, split_name, i, renderer, image_size) for i in range(num_images))
  if num_images < _MIN_POOL_SIZE:
    yield from map(_example, tasks)
    return
  # Forked as in world/builder.py (see there why that is safe: the workers run
  # only NumPy and PIL); imap keeps the order.
  ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                            category=RuntimeWarning)
    pool = ctx.Pool(_num_cpus())
  with pool:
    yield from pool.imap(_example, tasks, chunksize=_CHUNK_SIZE)


def _write(path: str, data: bytes) -> None:
  """Writes under a temporary name, then os.replace: never a partial file. Local
  paths only (io_utils handles gs:// through TensorFlow, slow per small file)."""
  d, base = os.path.split(path)
  os.makedirs(d or ".", exist_ok=True)
  tmp = os.path.join(d, f".{base}.tmp-{uuid.uuid4().hex[:8]}")
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
  _write(path, (json.dumps(obj) + "\n").encode("utf-8"))


def _write_jsonl(path: str, rows: list[dict]) -> None:
  _write(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))


def _check(renderer: str, num_images: int, seed: int, split_name: str,
           image_size: int) -> None:
  if not isinstance(seed, int) or seed < 0:
    raise UserError(f"seed={seed!r}: give a non-negative integer.")
  if renderer not in render.RENDERERS:
    raise UserError(f"renderer {renderer!r}: expected one of {render.RENDERERS}.")
  if not isinstance(num_images, int) or num_images < 1:
    raise UserError(f"num_images={num_images!r}: give a positive number of images.")
  if not isinstance(split_name, str) or not _SPLIT_RE.fullmatch(split_name):
    raise UserError(f"split name {split_name!r}: use letters, digits, '_' or '-' "
                    f"(it is part of file names), e.g. 'train2014'.")
  if not isinstance(image_size, int) or image_size < 8:
    raise UserError(f"image_size={image_size!r}: give at least 8 pixels (the world's own "
                    f"size is {IMAGE_SIZE}).")


def _info(task, renderer, seed, split_name, image_size) -> dict:
  return {"description": f"zoomshot_jax demo world, {task}", "renderer": renderer,
          "seed": seed, "split": split_name, "image_size": image_size}


def write_vqa(out_dir: str, renderer: str, num_images: int, seed: int = 0,
              split_name: str = "train2014", image_size: int = IMAGE_SIZE) -> dict[str, str]:
  """VQA v2 files for `num_images` scenes (4 to 7 questions each).

  Returns:
    {"questions", "annotations", "image_dir"}: `vl.readers.read_vqa(**paths)` reads them.
  """
  _check(renderer, num_images, seed, split_name, image_size)
  questions, annotations = [], []
  for index, ex in enumerate(_examples("vqa", seed, split_name, num_images, renderer,
                                       image_size)):
    image_id = index + 1
    _write(os.path.join(out_dir, split_name, f"COCO_{split_name}_{image_id:012d}.jpg"),
           ex["jpeg"])
    for k, item in enumerate(ex["text"]):
      qid = image_id * 1000 + k      # VQA v2's own numbering
      questions.append({"question_id": qid, "image_id": image_id, "question": item["question"]})
      annotations.append({"question_id": qid, "image_id": image_id,
                          "question_type": item["question_type"],
                          "answer_type": item["answer_type"],
                          "multiple_choice_answer": item["answer"], "answers": item["answers"]})
  info = _info("vqa", renderer, seed, split_name, image_size)
  paths = {"questions": os.path.join(out_dir, f"v2_OpenEnded_mscoco_{split_name}_questions.json"),
           "annotations": os.path.join(out_dir, f"v2_mscoco_{split_name}_annotations.json"),
           "image_dir": out_dir}
  # Index files last: once they exist, every image they name does.
  _write_json(paths["annotations"], {"info": info, "data_type": "mscoco",
                                     "data_subtype": split_name, "annotations": annotations})
  _write_json(paths["questions"], {"info": info, "task_type": "Open-Ended",
                                   "data_type": "mscoco", "data_subtype": split_name,
                                   "questions": questions})
  return paths


def write_snli_ve(out_dir: str, renderer: str, num_images: int, seed: int = 0,
                  split_name: str = "train", image_size: int = IMAGE_SIZE) -> dict[str, str]:
  """SNLI-VE lines for `num_images` scenes, one hypothesis per label each.

  Returns:
    {"path", "image_dir"}: `vl.readers.read_snli_ve(**paths)` reads them.
  """
  _check(renderer, num_images, seed, split_name, image_size)
  image_dir = os.path.join(out_dir, "flickr30k_images")
  rows = []
  for index, ex in enumerate(_examples("snli_ve", seed, split_name, num_images, renderer,
                                       image_size)):
    image = f"{split_name}_{index:06d}.jpg"
    _write(os.path.join(image_dir, image), ex["jpeg"])
    for label, hypothesis in ex["text"]["hypotheses"]:
      # SNLI's ids: caption "<image>#<k>", pair "<caption id>r1" + label initial.
      rows.append({"Flikr30kID": image, "captionID": f"{image}#0",
                   "pairID": f"{image}#0r1{label[0]}",
                   "sentence1": ex["text"]["caption"], "sentence2": hypothesis,
                   "gold_label": label})
  path = os.path.join(out_dir, f"snli_ve_{split_name}.jsonl")
  _write_jsonl(path, rows)
  return {"path": path, "image_dir": image_dir}


def write_vcr(out_dir: str, renderer: str, num_images: int, seed: int = 0,
              split_name: str = "train", image_size: int = IMAGE_SIZE,
              num_movies: int = NUM_MOVIES) -> dict[str, str]:
  """VCR lines for `num_images` scenes, one question each; image i is in the
  pseudo-movie "world_movie_{i % num_movies}" (for `held_out_movies_split`).

  Returns:
    {"path", "image_dir"}: `vl.readers.read_vcr(**paths)` reads them.
  """
  _check(renderer, num_images, seed, split_name, image_size)
  if not isinstance(num_movies, int) or num_movies < 1:
    raise UserError(f"num_movies={num_movies!r}: give a positive number of pseudo-movies.")
  image_dir = os.path.join(out_dir, "vcr1images")
  rows = []
  for index, ex in enumerate(_examples("vcr", seed, split_name, num_images, renderer,
                                       image_size)):
    movie = f"world_movie_{index % num_movies}"
    stem = f"{movie}/{movie}_{split_name}_{index:06d}"
    # Boxes circumscribe each object's circle of `radius` (every shape fits in
    # it), in pixels; detector score 1. No polygons: one empty list per object.
    boxes = [[(o.x - o.radius) * image_size, (o.y - o.radius) * image_size,
              (o.x + o.radius) * image_size, (o.y + o.radius) * image_size, 1.0]
             for o in ex["scene"].objects]
    t = ex["text"]
    _write(os.path.join(image_dir, stem + ".jpg"), ex["jpeg"])
    _write_json(os.path.join(image_dir, stem + ".json"),
                {"boxes": boxes, "segms": [[] for _ in boxes], "names": t["objects"],
                 "width": image_size, "height": image_size})
    rows.append({"movie": movie, "objects": t["objects"], "img_fn": stem + ".jpg",
                 "metadata_fn": stem + ".json", "question": t["question"],
                 "answer_choices": t["answer_choices"], "answer_label": t["answer_label"],
                 "rationale_choices": t["rationale_choices"],
                 "rationale_label": t["rationale_label"], "annot_id": f"{split_name}-{index}"})
  path = os.path.join(out_dir, f"{split_name}.jsonl")
  _write_jsonl(path, rows)
  return {"path": path, "image_dir": image_dir}


_WRITERS = {"vqa": write_vqa, "snli_ve": write_snli_ve, "vcr": write_vcr}


def write_all(out_dir: str, renderer: str, sizes: dict[str, int], seed: int = 0,
              image_size: int = IMAGE_SIZE) -> dict[str, dict[str, dict[str, str]]]:
  """The three tasks into out_dir/{vqa,snli_ve,vcr}, for the splits in `sizes`.

  Args:
    out_dir: the folder to write (created).
    renderer: "clean" or "photo".
    sizes: images per generic split, e.g. {"train": 1000, "val": 200}; keys from
      "train", "val", "test" (file names from SPLIT_NAMES).
    seed: the world seed.
    image_size: pixels per side.

  Returns:
    {task: {split: the task writer's paths}}.
  """
  unknown = sorted(set(sizes) - {"train", "val", "test"})
  if unknown:
    raise UserError(f"sizes has splits {unknown}; use 'train', 'val' and/or 'test', e.g. "
                    f"sizes={{'train': 1000, 'val': 200}}.")
  return {task: {split: writer(os.path.join(out_dir, task), renderer, n, seed,
                               SPLIT_NAMES[task][split], image_size)
                 for split, n in sizes.items()}
          for task, writer in _WRITERS.items()}


def write_domain_shift(out_dir: str, sizes: dict[str, int], seed: int = 0,
                       image_size: int = IMAGE_SIZE, test_split: str = "val") -> dict:
  """The world's domain shift, clean -> photo: train on clean, test on photo.

  Writes every split of `sizes` clean into out_dir/clean and `test_split`
  again with the "photo" renderer into out_dir/photo. The photo test split
  holds the very scenes and questions of the clean one (scenes and text do
  not depend on the renderer), so clean and photo accuracy on it differ by the
  rendering alone.

  Returns:
    {"clean": write_all(...), "photo": write_all(...)} (photo: test_split only).
  """
  if test_split not in sizes:
    raise UserError(f"test_split {test_split!r} is not in sizes {sorted(sizes)}; give its "
                    f"number of images too.")
  return {"clean": write_all(os.path.join(out_dir, "clean"), "clean", sizes, seed, image_size),
          "photo": write_all(os.path.join(out_dir, "photo"), "photo",
                             {test_split: sizes[test_split]}, seed, image_size)}
