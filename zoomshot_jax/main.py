r"""The zoomshot_jax binary: `python -m zoomshot_jax.main --config=... --workdir=...`.

`config.program` picks what runs (see zoomshot_jax/programs). Multi-host runs
are switched on by the environment (see `sharding.initialize_distributed`).
User mistakes end in one line on stderr and exit status 2. The terminal gets
one line per stage, the results and the output paths; the full log goes to
`<workdir>/log.txt` (`--alsologtostderr` or `--verbosity=1` also print it
on stderr; see zoomshot_jax/console.py).
"""

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from zoomshot_jax import compile_cache, console, host_memory, sharding
from zoomshot_jax.errors import UserError
from zoomshot_jax.programs import PROGRAMS

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/zeroshot_eval.py:b16.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (local or gs://) for outputs and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _one_line(message: str) -> str:
  """ml_collections embeds whole tracebacks in its messages; keep the gist."""
  lines = [l.strip() for l in message.strip().splitlines() if l.strip()]
  if any(l.startswith("Traceback") for l in lines):
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def _fail(message: str):
  print(f"zoomshot_jax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl's parser, with config mistakes (a misspelt field, a bad value or
  variant) reported in one line instead of a traceback from ml_collections."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{_one_line(str(e))} (--helpfull lists the flags)")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections wraps a KeyError's repr in an AttributeError: unquote it.
    text = str(e.args[0] if e.args else e).replace("\\n", ": ").replace("\\'", "")
    _fail(f"bad --config override: {_one_line(text.strip(chr(39) + ' '))}")


def verbose() -> bool:
  """Whether the log is shown on the terminal too (absl's flags)."""
  return FLAGS.verbosity >= 1 or FLAGS.alsologtostderr or FLAGS.logtostderr


def _print_outputs(workdir: str) -> None:
  results = os.path.join(workdir, "results.json")
  if "://" in workdir or os.path.exists(results):
    console.echo(f"Results: {results}")
  console.echo(f"Log: {console.log_path()} (all outputs in {workdir})")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  try:
    config.program  # pylint: disable=pointless-statement
  except OSError as e:  # the config file itself could not be loaded (lazily reported)
    _fail(f"--config: {_one_line(str(e))}")
  # transformers imports torch at start-up wherever it is installed (4 s of
  # every run on a 2-core host) and nothing here uses its torch side: legacy
  # .bin checkpoints are read with torch by encoders/params.py itself.
  os.environ.setdefault("USE_TORCH", "0")
  # Before anything large is allocated: XLA:CPU's per-step buffers are then
  # reused instead of being faulted in afresh on every step (host_memory.py).
  memory = host_memory.keep_freed_memory()
  try:
    console.setup(FLAGS.workdir, verbose=verbose())
    logging.info("Host memory: %s.", memory)
    cache_dir = compile_cache.setup(config.get("compilation_cache", ""))
    logging.info("Compilation cache: %s.", cache_dir or "off")
    sharding.initialize_distributed()
    if note := compile_cache.process_note(cache_dir):
      logging.info("%s", note)
    if config.program not in PROGRAMS:
      raise UserError(f"config.program={config.program!r} is not one of {sorted(PROGRAMS)}.")
    program = importlib.import_module(PROGRAMS[config.program])
    logging.info("Config:\n%s", config.to_json_best_effort(indent=2))
    with console.stage(config.program):
      program.run(config, FLAGS.workdir)
  except UserError as e:
    _fail(str(e))
  _print_outputs(FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
