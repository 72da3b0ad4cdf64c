"""The benchmark scripts in launch/ parse their flags (the device-check ones too).

Each script runs with the flags launch/device_check.sh passes, then --help:
absl parses every flag before it and stops at --help (exit status 1, its
convention), so an unknown or ill-typed flag shows up as a parsing error. No
benchmark runs; the scripts start in parallel (under 5 s in all).
"""

import os
import subprocess
import sys

import pytest

import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = {
    "bench_clip_throughput.py": ["--arch=l14", "--dtype=bfloat16", "--batch_size=256",
                                 "--measure_peak_n=8192", "--json_out=/tmp/x.json"],
    "bench_text_to_concept.py": ["--parts=t2c,zoomshot", "--zs_batches=256,1024",
                                 "--zs_steps=5", "--json_out=/tmp/x.json"],
    "bench_asif.py": ["--anchors=1600000", "--layouts=anchors", "--data_threads=4",
                      "--torch_device=auto", "--time_limit=30", "--json_out=/tmp/x.json"],
    "vl_baselines.py": ["--root=/tmp/x", "--tasks=vqa,vcr", "--regimes=low1,shift",
                        "--seeds=0,1", "--methods=none,naive,clip_td", "--only_existing",
                        "--parallel=2"],
    "bench_clip_td.py": ["--preset=vilt_b32", "--image_size=384", "--teacher=b32",
                         "--text_length=40", "--teacher_length=40", "--num_answers=3129",
                         "--batch_size=32", "--json_out=/tmp/x.json"],
    "bench_vl.py": ["--preset=vilt_b32", "--image_size=384", "--batch_size=64", "--steps=10",
                    "--torch_device=auto", "--json_out=/tmp/x.json"],
    "bench_distill.py": ["--teacher=b32", "--student=vit_tiny", "--batch_size=256",
                         "--steps=10", "--torch_device=auto", "--json_out=/tmp/x.json"],
}


def test_bench_scripts_parse_their_flags():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  running = {name: procs.popen([os.path.join(ROOT, "launch", name), *flags, "--help"], env)
             for name, flags in SCRIPTS.items()}
  for name, proc in running.items():
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1), (name, err[-2000:])
    assert "Flags parsing error" not in err and "Traceback" not in err, (name, err[-2000:])
    assert "Try --helpfull" in out, (name, out[-1000:], err[-2000:])
    for flag in SCRIPTS[name]:
      assert flag.split("=")[0].lstrip("-") in out, (name, flag)


def test_device_check_help_and_syntax():
  script = os.path.join(ROOT, "launch", "device_check.sh")
  subprocess.run(["bash", "-n", script], check=True)
  out = subprocess.run(["bash", script, "--help"], check=True, capture_output=True,
                       text=True).stdout
  assert "--smoke" in out and "--out=" in out


@pytest.mark.parametrize("flags, message", [
    (["--similarity_passes=0"], "--similarity_passes=0: give 1 or more"),
    (["--anchors=0"], "--anchors=0: give 1 or more"),
    (["--anchors=500"], "--k=800 is more than the 500 anchors"),
    (["--sweep=20000x1000,20000x"], "--sweep: '20000x' is not a size NxQ"),
    (["--sweep=20000x1000,500x1000"], "--k=800 is more than the 500 anchors"),
    (["--layouts=anchors,rows"], "--layouts=anchors,rows: give one or both of anchors, queries"),
    (["--anchor_chunk=-1"], "--anchor_chunk=-1: give 0 or more"),
    (["extra"], "unexpected arguments"),
])
def test_bench_asif_refuses_bad_flags(flags, message):
  """A flag that would make every run fail or mean nothing is a usage error
  (status 2) naming it, before any data is made or benchmark run."""
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "bench_asif.py"), *flags],
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr and "ASIF pipeline" not in proc.stdout
