r"""The zoomshot_jax binary: `python -m zoomshot_jax.main --config=... --workdir=...`.

`config.program` picks what runs (see zoomshot_jax/programs). Multi-host runs
are switched on by the environment (see `sharding.initialize_distributed`).
User mistakes end in one line on stderr and exit status 2.
"""

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from zoomshot_jax import sharding
from zoomshot_jax.errors import UserError
from zoomshot_jax.programs import PROGRAMS

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/zeroshot_eval.py:b16.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (local or gs://) for outputs and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  try:
    sharding.initialize_distributed()
    if config.program not in PROGRAMS:
      raise UserError(f"config.program={config.program!r} is not one of {sorted(PROGRAMS)}.")
    program = importlib.import_module(PROGRAMS[config.program])
    logging.info("Config:\n%s", config)
    program.run(config, FLAGS.workdir)
  except UserError as e:
    logging.error("%s", e)
    print(f"zoomshot_jax: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
