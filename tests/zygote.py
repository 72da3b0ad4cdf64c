"""What the binaries' forkserver imports once (tests/procs.py).

Every binary a test launches spent 6-9 s of CPU importing TensorFlow,
transformers, jax and the library before doing anything, on a 2-core machine
that runs about fifty of them. The forkserver imports them once per test
worker; each launch is then a fork of it that runs the binary's module as
`__main__`, as `python -m` does. Nothing here may touch a JAX backend: a
child picks its device count (XLA_FLAGS) and multi-host settings when it
first uses one.
"""

import importlib
import os

# As the binaries have them before these imports (zoomshot_jax/main.py sets
# USE_TORCH; console.setup sets TQDM_DISABLE when stderr is not a terminal,
# which a test's never is; tests/procs.py's children run on the CPU). All
# three are read at import time only.
os.environ["USE_TORCH"] = "0"
os.environ["TQDM_DISABLE"] = "1"
os.environ["JAX_PLATFORMS"] = "cpu"

# pylint: disable=g-import-not-at-top,unused-import
import tensorflow as tf  # noqa: E402,F401
import tensorflow_datasets as tfds  # noqa: E402,F401
import jax  # noqa: E402,F401
import flax  # noqa: E402,F401
import optax  # noqa: E402,F401
import orbax.checkpoint  # noqa: E402,F401
import transformers  # noqa: E402,F401

# The library itself, but not its entry modules (zoomshot_jax.main and
# zoomshot_jax.demo.__main__ define absl flags when they run as __main__).
from zoomshot_jax.programs import PROGRAMS  # noqa: E402

for _name in PROGRAMS.values():
  importlib.import_module(_name)

from jax._src import xla_bridge  # noqa: E402

assert not xla_bridge._backends, "a JAX backend was created while preloading"  # pylint: disable=protected-access

from absl import flags  # noqa: E402

# An entry module imported here would define its flags twice when it runs.
_defined = [m for m in flags.FLAGS.flags_by_module_dict() if "zoomshot_jax" in m]
assert not _defined, f"flags defined while preloading: {_defined}"
