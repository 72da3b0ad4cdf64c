"""Zero-shot feature distillation: the loss terms against NumPy, the student
presets' sizes, the export round trip, and the program end to end."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import procs
from zoomshot_jax import encoders, models
from zoomshot_jax.configs import distill as distill_config
from zoomshot_jax.errors import UserError
from zoomshot_jax.methods import feature_distillation as fd
from zoomshot_jax.programs import distill as program


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ce(logits):
  """Mean cross-entropy with the diagonal as labels, in float64 NumPy."""
  logits = logits - logits.max(1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return -np.mean(np.diag(logp))


def test_terms_match_numpy():
  rng = np.random.default_rng(0)
  zs, zt, txt = (_unit(rng.standard_normal((6, 5))) for _ in range(3))
  log_t = -0.7
  got = fd.terms(jnp.asarray(zs), jnp.asarray(zt), jnp.asarray(txt), log_t)
  scale = np.exp(-log_t)
  want = {
      "l2": np.mean(np.sqrt(((zs - zt) ** 2).sum(1))),       # un-squared, batch mean
      "i2i": _ce(scale * zs @ zt.T),                          # one direction
      "contrastive": 0.5 * (_ce(scale * zs @ txt.T) + _ce(scale * txt @ zs.T)),
      "cosine": np.mean((zs * zt).sum(1)),
  }
  for k, v in want.items():
    np.testing.assert_allclose(float(got[k]), v, rtol=1e-5, err_msg=k)
  # l2 = mean of sqrt(2 - 2 cos) on unit vectors.
  np.testing.assert_allclose(float(got["l2"]), np.mean(np.sqrt(2 - 2 * (zs * zt).sum(1))),
                             rtol=1e-5)
  for alpha in (0.0, 0.3, 1.0):
    h = fd.Hyper(distill="l2", alpha=alpha)
    np.testing.assert_allclose(float(fd.total(got, h)),
                               (1 - alpha) * want["l2"] + alpha * want["contrastive"], rtol=1e-5)


def test_loss_fn_uses_each_images_class_prompt_and_the_learned_temperature():
  rng = np.random.default_rng(1)
  text = _unit(rng.standard_normal((3, 4))).astype(np.float32)
  images = rng.standard_normal((5, 4)).astype(np.float32)
  labels = np.array([2, 0, 1, 1, 2])
  h = fd.Hyper(distill="i2i", alpha=0.5, learn_temperature=True, log_temperature=0.2)
  params = fd.init({"w": jnp.eye(4)}, h)
  assert float(params["log_temperature"]) == pytest.approx(0.2)
  loss_fn = fd.make_loss_fn(h, lambda p, s, x: (x @ p["w"], s), lambda p, x: x * 2.0 + p,
                            "s", "t")
  batch = {"s": images, "t": images, "label": labels}
  params["log_temperature"] = jnp.asarray(-0.4)
  loss, (t, _) = loss_fn(params, {}, batch, {"teacher": 0.0, "text": text}, None)
  zs = _unit(images.astype(np.float64))
  scale = np.exp(0.4)
  want = 0.5 * _ce(scale * zs @ zs.T) + 0.5 * 0.5 * (
      _ce(scale * zs @ text[labels].T) + _ce(scale * text[labels] @ zs.T))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  grads = jax.grad(lambda p: loss_fn(p, {}, batch, {"teacher": 0.0, "text": text}, None)[0])(
      params)
  assert float(jnp.abs(grads["log_temperature"])) > 0     # the temperature learns


def test_contrastive_only_loss_never_runs_the_teacher():
  rng = np.random.default_rng(2)
  text, images = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2))

  def teacher(p, x):
    raise AssertionError("the teacher's image tower ran at alpha = 1")

  loss_fn = fd.make_loss_fn(fd.Hyper(alpha=1.0), lambda p, s, x: (x, s), teacher, "s", "t")
  loss, (t, _) = loss_fn({}, {}, {"s": images, "t": images, "label": np.arange(3)},
                         {"text": _unit(text)}, None)
  zs, txt = _unit(images.astype(np.float64)), _unit(text.astype(np.float64))
  np.testing.assert_allclose(float(loss), 0.5 * (_ce(zs @ txt.T) + _ce(txt @ zs.T)), rtol=1e-5)
  assert set(t) == {"contrastive"}


@pytest.mark.parametrize("field,value", [("loss", "mse"), ("alpha", 1.5), ("alpha", -0.1)])
def test_bad_hyper_is_refused(field, value):
  c = distill_config.get_config()
  c.distill[field] = value
  with pytest.raises(UserError, match=f"config.distill.{'alpha' if field == 'alpha' else 'loss'}"):
    program.hyper(c)


# Known sizes (encoder only, no classifier): DeiT-Ti 5.5M at 224 px, torchvision
# ResNet-18 11.2M / ResNet-50 23.5M without fc, RegNetY-400MF 3.9M without head.
SIZES = {"vit_tiny": 5.52e6, "resnet18": 11.18e6, "resnet50": 23.51e6, "regnety_400mf": 3.90e6}


@pytest.mark.parametrize("preset", sorted(SIZES))
def test_presets_have_their_architectures_sizes(preset):
  cfg = distill_config.get_config(preset).student
  s = models.student.build(cfg, image_size=224, clip_dim=512, seed=0)
  n = models.student.count(s.params["encoder"])
  assert abs(n - SIZES[preset]) / SIZES[preset] < 0.02, n
  assert s.params["head"]["kernel"].shape == (s.dim, 512)


def test_world_students_are_under_a_quarter_of_the_demo_teachers_tower():
  from zoomshot_jax.configs import demo as demo_config  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.models import tiny_clip  # pylint: disable=g-import-not-at-top
  model = tiny_clip.build(demo_config.get_config().clip, vocab_size=60, image_size=48)
  from zoomshot_jax.encoders import params as params_lib  # pylint: disable=g-import-not-at-top
  p = params_lib.random_params(model)
  tower = models.student.count({k: p[k] for k in ("vision_model", "visual_projection")})
  for preset in ("world_vit", "world_resnet"):
    s = models.student.build(distill_config.get_config(preset).student, 48, 64, 0)
    assert s.num_params <= 0.25 * tower, (preset, s.num_params, tower)


@pytest.mark.parametrize("preset", ["world_vit", "world_resnet"])
def test_export_loads_as_a_clip_space_vision_encoder(tmp_path, preset):
  from zoomshot_jax.encoders.preprocessing import PreprocessSpec  # pylint: disable=g-import-not-at-top
  spec = PreprocessSpec(resize=48, resize_mode="exact", crop=0, mean=(.5,) * 3, std=(.25,) * 3)
  s = models.student.build(distill_config.get_config(preset).student, 48, 16, seed=3)
  # Non-trivial batch statistics and head, so that a dropped one would show.
  state = jax.tree.map(lambda x: x + 0.3, s.model_state)
  params = dict(s.params, head={"kernel": s.params["head"]["kernel"] * 2,
                                "bias": np.arange(16, dtype=np.float32)})
  path = models.student.write(str(tmp_path / "student"), s, params, state, spec,
                              {"teacher": "t"})
  enc = encoders.load_vision_encoder("student", path)
  assert enc.dim == 16 and enc.preprocess == spec
  images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
  want, _ = models.student.embed(s, params, state, spec.normalize(images), train=False)
  np.testing.assert_allclose(np.asarray(enc.image_features(enc.variables, images)),
                             np.asarray(want), rtol=1e-5, atol=1e-5)
  # An earlier stage's export starts the next one, head included.
  again = models.student.build(_with_checkpoint(preset, path), 48, 16, seed=9)
  np.testing.assert_array_equal(again.params["head"]["bias"], params["head"]["bias"])
  with pytest.raises(UserError, match="its head maps 64 -> 16|its head maps 48 -> 16"):
    models.student.build(_with_checkpoint(preset, path), 48, 32, seed=0)


def _with_checkpoint(preset, path):
  cfg = distill_config.get_config(preset).student
  cfg.checkpoint = path
  return cfg


def _config(clip_dir, folder, **overrides):
  c = distill_config.get_config("world_vit")
  c.clip = clip_dir
  c.data.dataset = "folder:" + folder
  c.train.update(batch_size=16, epochs=6, log_every=4, checkpoint_every=8)
  c.optimizer.learning_rate = 3e-3
  c.evals.zeroshot.update(datasets="folder:" + folder, batch_size=16, cache_dir="none",
                          templates=["a photo of a {}."])
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  from zoomshot_jax.tools import toy_assets  # pylint: disable=g-import-not-at-top
  return toy_assets.write_image_folder(str(tmp_path_factory.mktemp("distill_images")),
                                       per_class=16, seed=0)


# The run the program, API and resume tests share: a ResNet student (batch
# statistics in the state), checkpoints every 2 of its 9 steps.
TRAINED = {"student.preset": "world_resnet", "train.epochs": 3, "train.checkpoint_every": 2}


@pytest.fixture(scope="module")
def trained(tiny_clip_dir, folder, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("distill_run"))
  return workdir, program.run(_config(tiny_clip_dir, folder, **TRAINED), workdir)


def test_program_distils_exports_and_evaluates(tiny_clip_dir, folder, trained):
  workdir, out = trained
  for who in ("student", "clip"):
    r = out["results"][who]["folder:" + folder]
    assert r["num_examples"] == 48 and 0 <= r["top1"] <= 100
  counts = json.load(open(os.path.join(workdir, "params.json")))
  assert counts["student"] == out["params"]["student"] > 0
  # The student learned the teacher's features: the cosine of the exported
  # student to the teacher on the training images, against an untrained one.
  clip = encoders.load_clip(tiny_clip_dir)
  student = encoders.load_vision_encoder("student", out["export"])
  from zoomshot_jax import data  # pylint: disable=g-import-not-at-top
  src = data.get_source("folder:" + folder, "train")
  images = np.stack([ex["image"] for ex in src.host_shard()[0].map(
      lambda ex: {"image": data.preprocess_image(ex["image"], clip.preprocess)}
  ).as_numpy_iterator()])
  t = _unit(np.asarray(clip.image_features(clip.params, images)))
  trained = np.mean((_unit(np.asarray(student.image_features(student.variables, images))) * t
                     ).sum(1))
  fresh = models.student.build(_config(tiny_clip_dir, folder, **TRAINED).student, 32, clip.dim,
                               seed=0)
  f, _ = models.student.embed(fresh, fresh.params, fresh.model_state,
                              clip.preprocess.normalize(images), train=False)
  untrained = np.mean((_unit(np.asarray(f)) * t).sum(1))
  assert trained > 0.8 and trained > untrained + 0.3, (trained, untrained)
  # A second run with the same recipe reuses the export (no training).
  again = program.run(_config(tiny_clip_dir, folder, **TRAINED), workdir)
  assert again["results"] == out["results"]
  assert again["export"] == out["export"]


@pytest.mark.parametrize("override,message", [
    ({"student.preset": "vit_huge"}, "config.student.preset='vit_huge'"),
    ({"distill.alpha": 2.0}, "config.distill.alpha=2.0"),
    ({"data.dataset": ""}, "config.data.dataset is empty"),
    ({"data.in_memory_gb": -1.0}, "config.data.in_memory_gb=-1.0: expected a size in GB"),
])
def test_bad_config_is_refused_before_anything_runs(tiny_clip_dir, folder, tmp_path, override,
                                                    message):
  with pytest.raises(UserError, match=re.escape(message)):
    program.run(_config(tiny_clip_dir, folder, **override), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_the_binary_reports_a_bad_config_in_one_line(tiny_clip_dir, folder, tmp_path):
  args = {"clip": tiny_clip_dir, "data.dataset": "folder:" + folder, "student.preset": "vit_huge"}
  code, _, err = procs.wait(procs.launch("configs/distill.py:world_vit", str(tmp_path), args))
  assert code == 2, err[-2000:]
  assert "config.student.preset='vit_huge'" in err and "Traceback" not in err


def test_folder_classes_must_match_the_class_names(tiny_clip_dir, folder, tmp_path):
  names = tmp_path / "names.txt"
  names.write_text("red square\ngreen circle\npurple star\n")
  c = _config(tiny_clip_dir, folder, **{"data.classnames_file": str(names)})
  with pytest.raises(UserError, match=r"no directory for \['purple star'\].*"
                                      r"not in the list: \['blue triangle'\]"):
    program.run(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "export")


def test_teacher_without_a_text_tower_is_refused(tiny_clip_dir, folder, tmp_path):
  from transformers import CLIPConfig, FlaxCLIPVisionModel  # pylint: disable=g-import-not-at-top
  clip = encoders.load_clip(tiny_clip_dir)
  vision_only = str(tmp_path / "vision_only")
  config = CLIPConfig.from_pretrained(tiny_clip_dir).vision_config
  FlaxCLIPVisionModel(config, _do_init=False).save_pretrained(
      vision_only, params=jax.device_get({"vision_model": clip.params["vision_model"]}))
  shutil.copy(os.path.join(tiny_clip_dir, "preprocessor_config.json"), vision_only)
  with pytest.raises(UserError, match="vision_only"):
    program.run(_config(vision_only, folder), str(tmp_path / "w"))


def test_stage1_reads_image_text_pairs(tiny_clip_dir, folder, tmp_path):
  """Stage 1's web pairs come in ASIF's formats; l2 needs only their images."""
  import glob  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(folder, "*", "*.png")))[:32]
  tsv = tmp_path / "pairs.tsv"
  tsv.write_text("image\tcaption\n" + "".join(f"{f}\ta picture\n" for f in files))
  c = _config(tiny_clip_dir, folder, **{"data.dataset": f"tsv:{tsv}", "train.epochs": 1})
  out = program.run(c, str(tmp_path / "w"))
  meta = json.load(open(os.path.join(out["export"], "student.json")))
  assert meta["steps"] == 32 // 16
  c.distill.alpha = 0.5
  with pytest.raises(UserError, match="contrastive term on its captions is not implemented"):
    program.run(c, str(tmp_path / "w2"))


def test_an_exported_student_serves_the_api_and_asif(folder, trained):
  """In CLIP space: api.load_student classifies with the teacher's text tower,
  and ASIF takes the student as its image encoder by registry name."""
  from zoomshot_jax import api  # pylint: disable=g-import-not-at-top
  _, out = trained
  small = api.load_student(out["export"])
  import glob  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(folder, "*", "*.png")))[:3]
  probs = small.classify(files, ["red square", "green circle", "blue triangle"])
  assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
  student = encoders.load_vision_encoder("student", out["export"])
  emb = small.embed_images(files)
  want = np.asarray(student.image_features(student.variables, small.preprocess(files)))
  np.testing.assert_allclose(emb, _unit(want), rtol=1e-4, atol=1e-5)
  from zoomshot_jax.asif import Asif  # pylint: disable=g-import-not-at-top
  anchors = small.embed_images(files * 4)
  texts = small.embed_texts(["a red square", "a green circle", "a blue triangle"] * 4)
  scores = Asif(anchors, texts, ["c"] * 12, k=4, p=2).classify(emb, texts[:3])
  assert np.asarray(scores).shape == (3, 3)


class _Crash(Exception):
  pass


def _crash_at(step):
  def hook(done):
    if done == step:
      raise _Crash(step)
  return hook


def test_a_killed_run_resumes_to_the_uninterrupted_result(tiny_clip_dir, folder, tmp_path,
                                                           trained):
  """Checkpoints, the augmented batch order and the ResNet's batch statistics
  all resume: the export is the uninterrupted run's, bit for bit."""
  _, straight = trained
  with pytest.raises(_Crash):
    program.run(_config(tiny_clip_dir, folder, **TRAINED), str(tmp_path / "b"),
                hooks=[_crash_at(5)])
  assert not os.path.exists(tmp_path / "b" / "export" / "student")   # nothing half-written
  resumed = program.run(_config(tiny_clip_dir, folder, **TRAINED), str(tmp_path / "b"))
  for f in ("flax_model.msgpack", "head.npz"):
    assert (open(os.path.join(straight["export"], f), "rb").read()
            == open(os.path.join(resumed["export"], f), "rb").read()), f


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_a_student_starts_from_an_hf_checkpoint(tiny_vision_dirs, arch):
  """config.student.checkpoint + arch: the checkpoint's weights, a fresh head."""
  cfg = distill_config.get_config().student
  cfg.update(checkpoint=tiny_vision_dirs[arch], arch=arch)
  s = models.student.build(cfg, 32, 16, seed=0)
  want = encoders.load_vision_encoder(arch, tiny_vision_dirs[arch],
                                      "mean" if arch == "vit" else "pooler")
  for a, b in zip(jax.tree_util.tree_leaves(s.params["encoder"]),
                  jax.tree_util.tree_leaves(want.variables["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert s.params["head"]["kernel"].shape == (want.dim, 16)
  cfg.arch = "swin"
  with pytest.raises(UserError, match="config.student.arch='swin'"):
    models.student.build(cfg, 32, 16, seed=0)


def test_contrastive_on_each_images_own_caption(tiny_clip_dir, folder, tmp_path, monkeypatch):
  """data.captions_dir: each image's caption file is its text; a missing one
  is named. The step sees row `caption` of the caption table."""
  import glob  # pylint: disable=g-import-not-at-top
  captions = tmp_path / "captions"
  files = sorted(glob.glob(os.path.join(folder, "*", "*.png")))
  for i, f in enumerate(files):
    d = captions / os.path.basename(os.path.dirname(f))
    d.mkdir(parents=True, exist_ok=True)
    (d / (os.path.splitext(os.path.basename(f))[0] + ".txt")).write_text(f"picture {i % 5}\n")
  seen = {}
  real = fd.make_loss_fn

  def spy(h, embed, teacher, sk, tk, text_key="label"):
    seen["text_key"] = text_key
    return real(h, embed, teacher, sk, tk, text_key)

  monkeypatch.setattr(fd, "make_loss_fn", spy)
  c = _config(tiny_clip_dir, folder, **{"distill.alpha": 1.0, "train.epochs": 1,
                                        "data.captions_dir": str(captions)})
  program.run(c, str(tmp_path / "w"))
  assert seen["text_key"] == "caption"
  os.remove(captions / "red_square" / (os.path.splitext(os.path.basename(
      [f for f in files if "red_square" in f][0]))[0] + ".txt"))
  with pytest.raises(UserError, match="no caption file .*red_square"):
    program.run(c, str(tmp_path / "w2"))


def test_folder_extras_ride_through_the_training_pipeline(folder):
  from zoomshot_jax import data  # pylint: disable=g-import-not-at-top
  from zoomshot_jax.encoders.preprocessing import PreprocessSpec  # pylint: disable=g-import-not-at-top
  src = data.folder_source("folder:" + folder, extras=lambda files: {
      "caption": np.arange(len(files), dtype=np.int32) * 10})
  spec = PreprocessSpec(resize=32, resize_mode="exact", crop=0)
  batch = next(iter(data.train_batches(src, {"image": spec}, 48, seed=0).as_numpy_iterator()))
  assert sorted(batch["caption"] // 10) == list(range(48))   # each file's own value, shuffled
  names, files, labels = data.sources.list_folder(folder, False)
  np.testing.assert_array_equal(batch["label"], np.asarray(labels)[batch["caption"] // 10])


def test_two_processes_train_like_one(tiny_clip_dir, folder, tmp_path):
  """Data-parallel over hosts: two gloo processes of one device each run the
  same global steps as one process of two devices. Each host shuffles its own
  share of the images, so the batches (and the weights, slightly) differ from
  the single process's; the step count, the export and the accuracy must not."""
  base = {"clip": tiny_clip_dir, "data.dataset": "folder:" + folder,
          "student.preset": "world_resnet", "train.batch_size": 16, "train.epochs": 1,
          "train.log_every": 1, "evals.zeroshot.datasets": "folder:" + folder,
          "evals.zeroshot.batch_size": 16, "evals.zeroshot.cache_dir": "none",
          "evals.zeroshot.templates": "('a photo of a {}.',)", "reference_clip": False}
  config = os.path.join(procs.ROOT, "configs", "distill.py")
  procs.single_and_two_hosts(config, tmp_path, base)
  meta = {n: json.loads((tmp_path / n / "export" / "student" / "student.json").read_text())
          for n in ("single", "multi")}
  assert meta["single"]["steps"] == meta["multi"]["steps"] == 48 // 16
  res = {n: json.loads((tmp_path / n / "results.json").read_text())["student"]
         for n in ("single", "multi")}
  (s,), (m,) = res["single"].values(), res["multi"].values()
  assert s["num_examples"] == m["num_examples"] == 48
  assert abs(s["top1"] - m["top1"]) <= 10
  a, b = (np.load(tmp_path / n / "export" / "student" / "head.npz") for n in ("single", "multi"))
  np.testing.assert_allclose(a["kernel"], b["kernel"], atol=0.02)   # close, not identical
