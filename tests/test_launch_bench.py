"""The benchmark scripts in launch/ parse their flags (the device-check ones too).

Each script runs with the flags launch/device_check.sh passes, then --help:
absl parses every flag before it and stops at --help (exit status 1, its
convention), so an unknown or ill-typed flag shows up as a parsing error. No
benchmark runs; the scripts start in parallel (under 5 s in all). And a bad
value is refused before any work, with status 2 and the flag named.
"""

import os
import subprocess

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


# A bad flag or argument per script, and the message that must name it.
BAD_FLAGS = [
    ("bench_asif.py", ["--similarity_passes=0"], "--similarity_passes=0: give 1 or more"),
    ("bench_asif.py", ["--anchors=0"], "--anchors=0: give 1 or more"),
    ("bench_asif.py", ["--anchors=500"], "--k=800 is more than the 500 anchors"),
    ("bench_asif.py", ["--sweep=20000x1000,20000x"], "--sweep: '20000x' is not a size NxQ"),
    ("bench_asif.py", ["--sweep=20000x1000,500x1000"], "--k=800 is more than the 500 anchors"),
    ("bench_asif.py", ["--layouts=anchors,rows"],
     "--layouts=anchors,rows: give one or both of anchors, queries"),
    ("bench_asif.py", ["--anchor_chunk=-1"], "--anchor_chunk=-1: give 0 or more"),
    ("bench_asif.py", ["extra"], "unexpected arguments: ['extra']"),
    ("bench_clip_throughput.py", ["--batch_size=0"], "--batch_size=0: give 1 or more"),
    ("bench_clip_throughput.py", ["--steps=0"], "--steps=0: give 1 or more"),
    ("bench_clip_throughput.py", ["--peak_tflops=0"], "--peak_tflops=0.0: give the device's peak"),
    ("bench_text_to_concept.py", ["--zs_steps=0"], "--zs_steps=0: give 1 or more"),
    ("bench_text_to_concept.py", ["--target_r2=1"], "--target_r2=1.0: give an R² between 0"),
    ("bench_text_to_concept.py", ["--parts=t2c,x"], "--parts: unknown ['x']"),
    ("bench_distill.py", ["--steps=0"], "--steps=0: give 1 or more"),
    ("bench_distill.py", ["extra"], "unexpected arguments: ['extra']"),
    ("bench_vl.py", ["--batch_size=0"], "--batch_size=0: give 1 or more"),
    ("bench_clip_td.py", ["--candidates=0"], "--candidates=0: give 1 or more"),
    ("train_demo_models.py", ["--workdir=/tmp/x", "--clip_steps=0"],
     "--clip_steps=0: give 1 or more"),
    ("probe_shapes.py", ["--steps=40", "--warmup_steps=50"],
     "--warmup_steps=50: give fewer warm-up steps than --steps=40"),
    ("probe_shapes.py", ["--learning_rate=0"], "--learning_rate=0.0: give a learning rate above 0"),
    ("vl_baselines.py", ["--parallel=0"], "--parallel=0: give 1 or more"),
    ("zoomshot_grid.py", ["--vision=nope", "--root=/tmp/x"], "--vision: unknown ['nope']"),
]


def test_bench_scripts_refuse_bad_flags():
  """A flag that would make a benchmark or launcher end in a traceback, time
  nothing or mean nothing (an empty batch, no steps, a size under k, an
  unknown part) is a usage error: status 2, the flag named, before any data
  is made or benchmark run. The scripts start in parallel."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  running = [(name, flags, message,
              procs.popen([os.path.join(ROOT, "launch", name), *flags], env))
             for name, flags, message in BAD_FLAGS]
  for name, flags, message, proc in running:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (name, flags, err[-2000:])
    assert message in out + err, (name, flags, out[-1000:], err[-2000:])
    assert "Traceback" not in err, (name, flags, err[-2000:])
    assert "ASIF pipeline" not in out and "ours:" not in out, (name, flags, out[-1000:])
