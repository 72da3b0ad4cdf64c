"""What a run prints: one line per stage, progress with an ETA, results, paths.

Library chatter (our INFO logs, Orbax, tfds, jax, TensorFlow's Python logger,
transformers, Python warnings, TensorFlow's C++ start-up banners) goes to
`<workdir>/log.txt` instead of the terminal. `setup(workdir, verbose=True)`
(the binary's `--alsologtostderr` or `--verbosity=1`) also shows it on stderr.

Console lines go to stdout on the first process only; errors stay on stderr,
and so do WARNINGs of our own code and ERRORs of anyone's.

  console.setup(workdir, verbose)            # once, before heavy imports
  with console.stage("train clip", timings):  # "train clip: done in 3m02s"
    ... console.progress("train clip", step, steps, eta_s, "loss=0.31") ...
  console.echo(f"Results: {path}")
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import io
import logging
import os
import sys
import tempfile
import threading
import time
import traceback

from zoomshot_jax.errors import UserError

PROGRESS_EVERY_S = 30.0  # at most one progress line per stage this often
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_log = logging.getLogger("zoomshot_jax.console")
_clock = time.monotonic  # replaced by tests
_lock = threading.Lock()


class _State:
  """What setup() changed (undone by close()), and the console's bookkeeping."""

  def __init__(self):
    self.log_path: str | None = None     # the local file written
    self.remote_path: str | None = None  # where it is copied at exit (gs:// workdirs)
    self.file_handler: logging.Handler | None = None
    self.undo: list = []                 # callables restoring what setup() changed
    self.stages: list[tuple[str, float]] = []  # (name, start) of the open stages
    self.last_progress: dict[str, float] = {}
    self.stdout = None                   # the real stdout while a stage captures it
    self.process_index: int | None = None
    self.verbose = False


_state = _State()


def _env_process_index() -> int:
  for key in ("JAX_PROCESS_ID", "TPU_WORKER_ID"):
    try:
      return int(os.environ[key])
    except (KeyError, ValueError):
      pass
  return 0


def _process_index() -> int:
  """jax's once the distributed runtime is up, else the environment's guess."""
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():
    _state.process_index = jax.process_index()
  return _env_process_index() if _state.process_index is None else _state.process_index


def _is_remote(path: str) -> bool:
  return "://" in path


def _log_name(index: int) -> str:
  return "log.txt" if index == 0 else f"log.process{index}.txt"


def log_path() -> str | None:
  """The log file of this run (where the workdir is remote, its final place)."""
  return _state.remote_path or _state.log_path


class _TerminalFilter(logging.Filter):
  """stderr in quiet mode: WARNING+ of our code, ERROR+ of anyone's."""

  def filter(self, record):
    if getattr(record, "console", False):
      return False  # already printed on stdout
    if record.levelno >= logging.ERROR:
      return True
    return record.levelno >= logging.WARNING and record.pathname.startswith(_PACKAGE_DIR)


class _NotConsole(logging.Filter):
  """stderr in verbose mode: everything but the console's own lines."""

  def filter(self, record):
    return not getattr(record, "console", False)


class _ShortFormatter(logging.Formatter):
  """Our warnings read like our errors; anything else keeps absl's format."""

  def __init__(self, fallback: logging.Formatter):
    super().__init__()
    self.fallback = fallback

  def format(self, record):
    if record.pathname.startswith(_PACKAGE_DIR) and record.exc_info is None:
      return f"zoomshot_jax: {record.levelname.lower()}: {record.getMessage()}"
    return self.fallback.format(record)


def _make_workdir(workdir: str) -> None:
  if os.path.isfile(workdir):
    raise UserError(f"--workdir={workdir}: is a file, expected a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir={workdir}: cannot create it ({e.strerror})") from e


def _set(undo_to, obj, attr, value):
  """setattr, remembering how to undo it."""
  old = getattr(obj, attr)
  setattr(obj, attr, value)
  undo_to.append(lambda: setattr(obj, attr, old))


def _setenv_default(name: str, value: str) -> None:
  if name not in os.environ:
    os.environ[name] = value
    _state.undo.append(lambda: os.environ.pop(name, None))


def _import_quietly(module: str) -> None:
  """Imports `module` with file descriptor 2 pointing at the log: TensorFlow's
  C++ start-up banners (oneDNN, CUDA/cuDNN probing) ignore TF_CPP_MIN_LOG_LEVEL
  in current releases and bypass Python's sys.stderr."""
  if module in sys.modules or _state.log_path is None:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(_state.log_path, "ab") as f:
      os.dup2(f.fileno(), 2)
    try:
      __import__(module)
    except ImportError:
      pass  # the module that needs it reports the failure where it matters
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _route_transformers() -> None:
  """transformers logs through its own stderr handler and does not propagate
  (its TF/JAX deprecation notice appears on every run): send it to the root
  logger like every other library."""
  try:
    from transformers.utils import logging as hf_logging  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  hf_logging.disable_default_handler()
  hf_logging.enable_propagation()
  _state.undo.append(hf_logging.enable_default_handler)
  _state.undo.append(hf_logging.disable_propagation)


def _excepthook(kind, value, tb):
  """A crash's traceback goes to the log too (Python still prints it)."""
  handler = _state.file_handler
  if handler is not None and handler.stream is not None:
    handler.stream.write("".join(traceback.format_exception(kind, value, tb)))
    handler.flush()
  sys.__excepthook__(kind, value, tb)


def setup(workdir: str, verbose: bool = False) -> str:
  """Creates the workdir and sends every log record to `<workdir>/log.txt`.

  Call once, right after the flags are parsed and before TensorFlow or
  transformers are imported. Records of all loggers at the root logger's level
  (absl's --verbosity; INFO by default) are appended to the file with
  timestamps; Python warnings become log records. Unless `verbose`, stderr
  shows only WARNING+ of zoomshot_jax and ERROR+ of other libraries, tqdm bars
  are off when stderr is not a terminal, and TensorFlow is imported here with
  its C++ banners sent to the file.

  Returns the log file's path (a local temporary file, copied to the workdir
  at exit, when the workdir is remote such as gs://). Raises UserError when
  `workdir` is a file or cannot be created.
  """
  close()
  index = _env_process_index()
  if _is_remote(workdir):
    local_dir = tempfile.mkdtemp(prefix="zoomshot_jax-log-")
    _state.log_path = os.path.join(local_dir, _log_name(index))
    _state.remote_path = workdir.rstrip("/") + "/" + _log_name(index)
    atexit.unregister(_copy_to_remote)  # once, however often setup() runs
    atexit.register(_copy_to_remote)
  else:
    _make_workdir(workdir)
    _state.log_path = os.path.join(workdir, _log_name(index))

  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  handler = logging.FileHandler(_state.log_path, mode="a", encoding="utf-8")
  handler.setFormatter(absl_logging.PythonFormatter())
  handler.stream.write(f"==== {datetime.datetime.now().isoformat(sep=' ', timespec='seconds')} "
                       f"{' '.join(sys.argv)}\n")
  handler.flush()
  root = logging.getLogger()
  root.addHandler(handler)
  _state.undo.append(lambda: (root.removeHandler(handler), handler.close()))
  _state.file_handler = handler
  absl_handler = absl_logging.get_absl_handler()
  if absl_handler not in root.handlers and root.level > logging.INFO:
    # Not an absl app (tests, notebooks): absl's --verbosity sets nothing here.
    old_level = root.level
    root.setLevel(logging.INFO)
    _state.undo.append(lambda: root.setLevel(old_level))
  logging.captureWarnings(True)
  _state.undo.append(lambda: logging.captureWarnings(False))
  _set(_state.undo, sys, "excepthook", _excepthook)

  terminal_filter = _NotConsole() if verbose else _TerminalFilter()
  absl_handler.addFilter(terminal_filter)
  _state.undo.append(lambda: absl_handler.removeFilter(terminal_filter))
  if not verbose:
    python_handler = absl_handler.python_handler
    _set(_state.undo, python_handler, "formatter", _ShortFormatter(python_handler.formatter))
    if not sys.stderr.isatty():
      _setenv_default("TQDM_DISABLE", "1")  # bars are read at tqdm's import
    _import_quietly("tensorflow")
  _route_transformers()
  _state.verbose = verbose
  return _state.log_path


def close() -> None:
  """Undoes setup() (for tests and notebooks); the log file stays."""
  while _state.undo:
    _state.undo.pop()()
  _state.file_handler = _state.log_path = _state.remote_path = None
  _state.verbose = False


def _copy_to_remote() -> None:
  local, remote = _state.log_path, _state.remote_path
  if not local or not remote or not os.path.exists(local):
    return
  index = _process_index()
  remote = remote.rsplit("/", 1)[0] + "/" + _log_name(index)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    if _state.file_handler is not None:
      _state.file_handler.flush()
    tf.io.gfile.makedirs(remote.rsplit("/", 1)[0])
    old = tf.io.gfile.GFile(remote, "rb").read() if tf.io.gfile.exists(remote) else b""
    with open(local, "rb") as f:
      new = f.read()
    with tf.io.gfile.GFile(remote, "wb") as f:
      f.write(old + new)
  except Exception as e:  # pylint: disable=broad-except
    print(f"zoomshot_jax: warning: could not copy the log {local} to {remote}: {e}",
          file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
  """12.3s, 4m05s, 2h03m."""
  seconds = max(0.0, float(seconds))
  if seconds < 60:
    return f"{seconds:.1f}s"
  minutes, s = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes}m{s:02d}s"
  hours, m = divmod(minutes, 60)
  return f"{hours}h{m:02d}m"


def echo(text: str) -> None:
  """Prints one console line (stdout, first process only) and logs it."""
  _log.info("%s", text, extra={"console": True})
  if _process_index() == 0:
    print(text, file=_state.stdout or sys.stdout, flush=True)


def progress(stage: str, done: int, total: int, eta_s: float, extra: str = "") -> None:
  """Reports `done` of `total` steps of `stage`, `eta_s` seconds to go.

  Every call is logged; the console gets a line at most every
  PROGRESS_EVERY_S seconds per innermost open stage (counted from its start;
  outside any stage, per `stage` from its first call), and none once
  done == total (the stage's own line follows). `extra` (e.g. "loss=0.31,
  900 samples/s") ends the line.
  """
  text = (f"{stage}: {done}/{total} ({100 * done / max(total, 1):.0f}%), "
          f"ETA {format_seconds(eta_s)}" + (f", {extra}" if extra else ""))
  now = _clock()
  with _lock:
    # One clock per open stage: its sub-steps (each split of the world, each
    # dataset of an evaluation) share the budget of one line per period.
    key, start = _state.stages[-1] if _state.stages else (stage, now)
    since = _state.last_progress.setdefault(key, start)
    show = done < total and now - since >= PROGRESS_EVERY_S
    if show:
      _state.last_progress[key] = now
  if show:
    echo(text)
  else:
    _log.info("%s", text, extra={"console": True})


class _StdoutToLog(io.TextIOBase):
  """A stdout whose lines become log records."""

  def __init__(self):
    super().__init__()
    self._buffer = ""

  def writable(self):
    return True

  def isatty(self):
    return False

  def write(self, s):
    self._buffer += s
    *lines, self._buffer = self._buffer.split("\n")
    for line in lines:
      if line.strip():
        _log.info("stdout: %s", line.rstrip(), extra={"console": True})
    return len(s)

  def flush(self):
    if self._buffer.strip():
      self.write("\n")


@contextlib.contextmanager
def stage(name: str, timings: dict | None = None, capture_stdout: bool = False):
  """One console line when the block ends: "<name>: done in 12.3s".

  `timings[name]` gets the wall time in seconds (rounded to 0.1). With
  `capture_stdout`, what the block prints (e.g. a sub-program's own tables, tfds
  notices) goes to the log, unless setup() was verbose; console lines still
  reach the terminal. A failing block prints "<name>: failed after ...". A
  stage opened inside a capturing one writes its line to the log only (unless
  it fails).
  """
  from zoomshot_jax import compile_cache  # pylint: disable=g-import-not-at-top
  t0, compiled = _clock(), compile_cache.snapshot()
  with _lock:
    # A stage inside a capturing one (a program the demo runs in its stage)
    # logs its line: the terminal keeps one line per stage of the demo.
    nested = _state.stdout is not None
    _state.stages.append((name, t0))
  capture = capture_stdout and _state.stdout is None and not _state.verbose
  if capture:
    _state.stdout = sys.stdout
  _log.info("== %s", name, extra={"console": True})
  ok = False
  try:
    if capture:
      writer = _StdoutToLog()
      with contextlib.redirect_stdout(writer):
        yield
      writer.flush()
    else:
      yield
    ok = True
  finally:
    if capture:
      _state.stdout = None
    with _lock:
      _state.stages.pop()
      _state.last_progress.pop(name, None)
    elapsed = _clock() - t0
    if timings is not None:
      timings[name] = round(elapsed, 1)
    jit = compile_cache.summary(compiled)
    line = (f"{name}: {'done in' if ok else 'failed after'} {format_seconds(elapsed)}"
            + (f" ({jit})" if jit else ""))
    if nested and ok:
      _log.info("%s", line)
    else:
      echo(line)

