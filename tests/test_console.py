"""The console: chatter goes to <workdir>/log.txt, the terminal gets stage lines."""

import logging as std_logging
import os
import subprocess
import sys
import warnings

import pytest
from absl import logging

import procs
from zoomshot_jax import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "zeroshot_eval.py")


@pytest.fixture
def absl_on_root():
  """The absl stderr handler on the root logger at INFO, as `app.run` leaves it."""
  handler, level = logging.get_absl_handler(), std_logging.root.level
  std_logging.root.addHandler(handler)
  std_logging.root.setLevel(std_logging.INFO)
  yield
  console.close()
  std_logging.root.removeHandler(handler)
  std_logging.root.setLevel(level)


def test_setup_sends_logs_and_warnings_to_the_file_only(tmp_path, capfd, absl_on_root):
  workdir = tmp_path / "new" / "work"
  path = console.setup(str(workdir))
  assert path == str(workdir / "log.txt")
  logging.info("an INFO line of a library %d", 17)
  std_logging.getLogger("orbax.fake").info("orbax says hello")
  warnings.warn("a captured warning", UserWarning)
  console.echo("a console line")
  console.close()
  out, err = capfd.readouterr()
  log = (workdir / "log.txt").read_text()
  for chatter in ("an INFO line of a library 17", "orbax says hello", "a captured warning"):
    assert chatter in log
    assert chatter not in out + err
  # absl's format: level letter, date and time, file:line.
  line = next(l for l in log.splitlines() if "an INFO line" in l)
  assert line.startswith("I") and "test_console.py:" in line
  assert out == "a console line\n" and "a console line" in log
  assert err == ""


def test_cxx_writes_at_import_go_to_the_log(tmp_path, capfd, monkeypatch):
  """A module that writes to file descriptor 2 itself while it is imported
  (TensorFlow's oneDNN and CUDA banners bypass sys.stderr) writes into the log."""
  (tmp_path / "chatty_ext.py").write_text(
      "import os\nos.write(2, b'a C++ banner at import\\n')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  console.setup(str(tmp_path / "work"))
  try:
    console._import_quietly("chatty_ext")  # pylint: disable=protected-access
    os.write(2, b"after the import\n")      # fd 2 is the terminal's again
  finally:
    console.close()
    sys.modules.pop("chatty_ext", None)
  _, err = capfd.readouterr()
  assert "a C++ banner at import" in (tmp_path / "work" / "log.txt").read_text()
  assert "a C++ banner at import" not in err and "after the import" in err


def test_verbose_setup_shows_the_log_on_stderr(tmp_path, capfd, absl_on_root):
  console.setup(str(tmp_path), verbose=True)
  logging.info("shown when verbose")
  console.echo("printed once")
  console.close()
  out, err = capfd.readouterr()
  assert "shown when verbose" in err and "shown when verbose" in (tmp_path / "log.txt").read_text()
  assert out == "printed once\n" and "printed once" not in err


def test_setup_appends(tmp_path):
  for i in range(2):
    console.setup(str(tmp_path))
    logging.warning("run %d", i)
    console.close()
  log = (tmp_path / "log.txt").read_text()
  assert log.count("==== ") == 2 and log.index("run 0") < log.index("run 1")


def test_setup_rejects_a_file_as_workdir(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x")
  with pytest.raises(console.UserError, match="is a file, expected a directory"):
    console.setup(str(path))


def test_progress_is_rate_limited_and_logged(monkeypatch, capsys, caplog):
  now = [100.0]
  monkeypatch.setattr(console, "_clock", lambda: now[0])
  caplog.set_level(std_logging.INFO, logger="zoomshot_jax.console")
  timings = {}
  with console.stage("train", timings):
    for t, step in ((10, 10), (31, 30), (45, 40), (62, 60), (70, 100)):
      now[0] = 100.0 + t
      console.progress("train", step, 100, eta_s=125.0, extra="loss=0.5")
    now[0] = 180.0
  out = capsys.readouterr().out.splitlines()
  # One line 30 s into the stage, the next 30 s after it, none at the end.
  assert out == ["train: 30/100 (30%), ETA 2m05s, loss=0.5",
                 "train: 60/100 (60%), ETA 2m05s, loss=0.5",
                 "train: done in 1m20s"]
  assert timings == {"train": 80.0}
  logged = [r.getMessage() for r in caplog.records]
  assert sum(m.startswith("train: ") and "ETA" in m for m in logged) == 5


def test_stage_capture_and_failure(capsys, caplog):
  caplog.set_level(std_logging.INFO, logger="zoomshot_jax.console")
  with console.stage("world", capture_stdout=True):
    print("Downloading and preparing dataset ...")
  with pytest.raises(ValueError):
    with console.stage("maps"):
      raise ValueError("boom")
  out = capsys.readouterr().out
  assert "Downloading" not in out
  assert any("stdout: Downloading and preparing" in r.getMessage() for r in caplog.records)
  assert out.splitlines()[0].startswith("world: done in ")
  assert out.splitlines()[1].startswith("maps: failed after ")


@pytest.mark.parametrize("seconds,text", [(0.04, "0.0s"), (12.34, "12.3s"), (65, "1m05s"),
                                          (3725, "1h02m")])
def test_format_seconds(seconds, text):
  assert console.format_seconds(seconds) == text


def test_workdir_that_is_a_file_is_one_line_and_exit_2(tmp_path):
  path = tmp_path / "results.txt"
  path.write_text("not a directory")
  code, out, err = procs.wait(procs.launch(CONFIG, str(path), {}))
  assert code == 2, err[-2000:]
  assert len(err.splitlines()) == 1, err[-2000:]
  assert err.startswith("zoomshot_jax: error:") and f"--workdir={path}" in err
  assert "is a file, expected a directory" in err


def _main(*args, fresh=True):
  """`python -m zoomshot_jax.main ARGS` on one CPU device: (code, stdout, stderr).
  `fresh`: in a new interpreter, not a fork of the tests' forkserver (which has
  imported TensorFlow already: its start-up output is what is checked)."""
  # TensorFlow at its own log level: its chatter is what must stay off the terminal.
  env = {k: v for k, v in procs.env(1).items() if not k.startswith("TF_CPP")}
  if not fresh:
    return procs.popen(["-m", "zoomshot_jax.main", *args], env)
  return subprocess.Popen([sys.executable, "-m", "zoomshot_jax.main", *args], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_binary_logs_to_the_file_and_alsologtostderr_shows_it(tmp_path):
  """A run that fails inside the program: the terminal has its stage line and
  the one-line error, log.txt the INFO logs and TensorFlow's C++ banners."""
  args = [f"--config={CONFIG}", f"--config.clip={tmp_path / 'no_such_clip'}"]
  quiet = _main(*args, f"--workdir={tmp_path / 'quiet'}")
  # With --alsologtostderr everything is shown; what it checks needs no fresh start.
  loud = _main(*args, f"--workdir={tmp_path / 'loud'}", "--alsologtostderr", fresh=False)
  (code, out, err), (loud_code, _, loud_err) = procs.wait(quiet), procs.wait(loud)
  assert code == loud_code == 2, err[-2000:]
  assert len(err.splitlines()) == 1 and err.startswith("zoomshot_jax: error:"), err[-2000:]
  assert out.splitlines() == [l for l in out.splitlines() if l.startswith("zeroshot_eval: ")]
  assert "zeroshot_eval: failed after" in out
  log = (tmp_path / "quiet" / "log.txt").read_text()
  assert "] Config:" in log and "zeroshot_eval: failed after" in log
  # The binary kept freed host memory for reuse (host_memory.py), and said so in the log only.
  assert "] Host memory: freed memory kept for reuse" in log
  assert "] Config:" in loud_err and "] Config:" in (tmp_path / "loud" / "log.txt").read_text()


def test_remote_workdir_gets_the_log_at_exit(tmp_path):
  """A gs:// workdir cannot be appended to: the log is local until exit
  (file:// stands in for gs://; tf.io.gfile treats both alike)."""
  remote = f"file://{tmp_path}/remote"
  local = console.setup(remote)
  assert not local.startswith(str(tmp_path)) and console.log_path() == remote + "/log.txt"
  logging.warning("kept for the remote log")
  console._copy_to_remote()  # what atexit runs
  console.close()
  assert "kept for the remote log" in (tmp_path / "remote" / "log.txt").read_text()
