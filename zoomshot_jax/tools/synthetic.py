r"""The synthetic-data toolkit's two commands (zoomshot_jax/synthetic).

  python -m zoomshot_jax.tools.synthetic prompts --attributes=pets.json \
      [--classnames=classes.txt] --out=prompts.jsonl
  python -m zoomshot_jax.tools.synthetic filter --clip=<hub id or dir> \
      --images=/data/synthetic/pets/images --out=/data/synthetic/pets/filtered

`prompts` writes one JSON object per prompt ({"class", "index", "prompt",
"attributes"}) and prints the prompts per class; a text-to-image model of
your choice turns them into images/<class>/<index>.png. `filter` keeps the
images the teacher classifies as their class (out/<class>/..., out/
manifest.jsonl, out/log.txt) and prints kept/total per class. Mistakes end in
one line and exit status 2.
"""

import os
import sys

from absl import app, flags

flags.DEFINE_string("attributes", None, "prompts: the attributes JSON file.")
flags.DEFINE_string("classnames", "", "Class names, one per line or a JSON list "
                    "(prompts: instead of the attributes file's classes; filter: the folder's "
                    "class names in directory order).")
flags.DEFINE_string("clip", None, "filter: the teacher CLIP (hub id or directory).")
flags.DEFINE_string("images", None, "filter: the generated images, <class>/<file>.")
flags.DEFINE_string("template", "a photo of a {}.", "filter: the teacher's prompt template.")
flags.DEFINE_integer("batch_size", 256, "filter: images per step.")
flags.DEFINE_string("out", None, "Output file (prompts) or directory (filter).")
FLAGS = flags.FLAGS
COMMANDS = ("prompts", "filter")


def _fail(message: str):
  print(f"zoomshot_jax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _need(command, *names):
  missing = [n for n in names if not getattr(FLAGS, n)]
  if missing:
    _fail(f"{command} needs " + ", ".join(f"--{n}" for n in missing) + ".")


def prompts_command(attributes: str, classnames: str, out: str) -> str:
  """Writes the prompts; returns the line to print."""
  from zoomshot_jax import io_utils  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.evaluation.classnames import read_list  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.synthetic import prompts  # pylint: disable=g-import-not-at-top
  if not os.path.exists(attributes):
    raise UserError(f"--attributes={attributes}: no such file.")
  try:
    spec = io_utils.read_json(attributes)
  except ValueError as e:
    raise UserError(f"--attributes={attributes} is not JSON ({e}).") from e
  names = list(read_list(classnames, "class names")) if classnames else None
  rows = prompts.build(spec, names, where=attributes)
  prompts.write_jsonl(out, rows)
  n = prompts.counts(rows)
  per = sorted(set(n.values()))
  return (f"{len(rows)} prompts for {len(n)} classes "
          f"({per[0] if len(per) == 1 else f'{per[0]}-{per[-1]}'} per class): {out}")


def filter_command():
  from zoomshot_jax import console  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  log_dir = FLAGS.out.rstrip("/") + ".logs"
  console.setup(log_dir)   # before TensorFlow is imported: its banners go to the log
  from zoomshot_jax import encoders, sharding  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.synthetic import teacher_filter  # pylint: disable=g-import-not-at-top
  clip = encoders.load_clip(FLAGS.clip)
  mesh = sharding.make_mesh([("data", -1)])
  with console.stage("filter"):
    report = teacher_filter.filter_folder(clip, FLAGS.images, FLAGS.out, mesh, FLAGS.template,
                                          FLAGS.batch_size, FLAGS.classnames)
  kept, total = sum(report["kept"].values()), sum(report["total"].values())
  worst = sorted(report["kept"], key=lambda c: report["kept"][c] / report["total"][c])[:5]
  console.echo(f"Kept {kept}/{total} images ({100 * kept / total:.1f}%); fewest kept: " +
               ", ".join(f"{c} {report['kept'][c]}/{report['total'][c]}" for c in worst))
  console.echo(f"Filtered images: {FLAGS.out} (manifest.jsonl); log: {log_dir}/log.txt")


def main(argv):
  from zoomshot_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  if len(argv) != 2 or argv[1] not in COMMANDS:
    _fail(f"expected one command, {' or '.join(COMMANDS)}; got {argv[1:]}.")
  try:
    if argv[1] == "prompts":
      _need("prompts", "attributes", "out")
      print(prompts_command(FLAGS.attributes, FLAGS.classnames, FLAGS.out))
    else:
      _need("filter", "clip", "images", "out")
      filter_command()
  except UserError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main)
