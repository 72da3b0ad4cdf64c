r"""The demo world, end to end: `python -m zoomshot_jax.demo --workdir=DIR`.

Builds the world, trains the tiny CLIP and the tiny vision encoder (cached in
the workdir after the first run), runs Text-to-Concept, Zoom-shot and ASIF,
and prints one line per stage, the zero-shot table and the output paths;
writes results.json, results.png and log.txt (everything else the run
logs; --alsologtostderr or --verbosity=1 print it on stderr too).
The config defaults to the packaged configs/demo.py; pass
--config=configs/demo.py:micro (or any other variant) and --config.* overrides
as for `python -m zoomshot_jax.main`, which runs the same program.
"""

import os
import sys

from absl import app

from zoomshot_jax import configs
from zoomshot_jax import main as main_lib

DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "demo.py")


def with_default_config(argv: list[str]) -> list[str]:
  """argv with --config=<packaged demo config> unless one is given."""
  given = any(a == "--config" or a.startswith("--config=") for a in argv[1:])
  return argv if given else [argv[0], f"--config={DEFAULT_CONFIG}"] + argv[1:]


if __name__ == "__main__":
  app.run(main_lib.main, argv=with_default_config(sys.argv),
          flags_parser=main_lib.parse_flags)
