"""The ASIF program and binary end to end, on tiny random encoders.

Results are checked against a dense NumPy computation from the stored anchor
embeddings and the cached query embeddings; anchor updates, streaming and
two processes against one must change nothing; user mistakes end in one line
and exit status 2.
"""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import procs
from zoomshot_jax.asif import relative, toy
from zoomshot_jax.asif.store import AnchorStore
from zoomshot_jax.configs import asif as asif_config
from zoomshot_jax.encoders import testing
from zoomshot_jax.errors import UserError
from zoomshot_jax.programs import asif as asif_program
from zoomshot_jax.evaluation import results as results_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "asif.py")
@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("asif_env")
  return {"vit": testing.save_tiny_vision("vit", str(root / "vit"), seed=1),
          "bert": testing.save_tiny_text("bert", str(root / "bert"), seed=2),
          "anchors": toy.write_anchors(str(root / "a"), per_class=8, seed=3),
          "more": toy.write_anchors(str(root / "b"), per_class=3, seed=4)}


def _config(env, datasets=None, **overrides):
  config = asif_config.get_config("tiny")
  config.anchors.source = "tsv:" + env["anchors"]
  config.image_encoder.checkpoint = env["vit"]
  config.text_encoder.checkpoint = env["bert"]
  if datasets is not None:
    config.evals.asif.datasets = datasets
  config.update_from_flattened_dict(overrides)
  return config


def _dense_results(workdir, dataset, store, k, p):
  """top-1/top-5 from the stored embeddings, by the spec, in NumPy."""
  cache = np.load(os.path.join(workdir, "asif_reps", os.path.basename(
      results_lib.predictions_path("", dataset))))

  def rep(q, a, normalize):
    s = q @ a.T
    order = np.lexsort((np.broadcast_to(np.arange(len(a)), s.shape), -s), axis=1)[:, :k]
    r = np.zeros(s.shape)
    np.put_along_axis(r, order, np.take_along_axis(s, order, 1).astype(np.float64) ** p, 1)
    return r / np.linalg.norm(r, axis=1, keepdims=True) if normalize else r

  n = store.num_anchors
  scores = (rep(cache["image"], store.rows("image", 0, n), False)
            @ rep(cache["text"], store.rows("text", 0, n), True).T)
  classes = scores.reshape(len(scores), 3, -1).max(2)
  order = np.argsort(-classes, axis=1, kind="stable")
  labels = cache["labels"]
  return {"top1": 100 * np.mean(order[:, 0] == labels),
          "top5": 100 * np.mean((order[:, :3] == labels[:, None]).any(1)),
          "num_examples": len(labels)}, classes


def test_program_end_to_end(env, image_folder, tmp_path):
  work = str(tmp_path / "work")
  dataset = "folder:" + image_folder
  config = _config(env, datasets=dataset, **{"evals.asif.explain": 2,
                                             "evals.asif.save_predictions": True})
  results = asif_program.run(config, work)
  assert json.loads(open(os.path.join(work, "results.json")).read()) == results
  store = AnchorStore.open(os.path.join(work, "anchors"))
  assert store.num_anchors == 24
  ref, classes = _dense_results(work, dataset, store, config.asif.k, config.asif.p)
  assert results[dataset]["num_examples"] == 21
  assert results[dataset]["top1"] == pytest.approx(ref["top1"])
  assert results[dataset]["top5"] == pytest.approx(ref["top5"])
  pred = np.load(results_lib.predictions_path(work, dataset))
  np.testing.assert_allclose(pred["logits"], classes, rtol=1e-4, atol=1e-7)
  explained = json.loads(open(os.path.join(work, "explanations", os.path.basename(
      results_lib.predictions_path("", dataset))[:-4] + ".json")).read())
  assert len(explained) == 2
  for e, logits in zip(explained, pred["logits"]):
    assert e["predicted"] == int(np.argmax(logits))
    assert e["score"] == pytest.approx(float(logits.max()), rel=1e-4)
    shares = [a["share"] for a in e["anchors"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-5
    assert all(a["caption"] == store.captions([a["index"]])[0] for a in e["anchors"])
  assert not [f for f in os.listdir(work) if ".tmp-" in f]


def test_added_anchors_update_cached_rows_like_a_recompute(env, image_folder, tmp_path,
                                                           monkeypatch):
  dataset = "folder:" + image_folder
  store_dir = str(tmp_path / "store")
  work = str(tmp_path / "work")
  asif_program.run(_config(env, datasets=dataset, anchors_dir=store_dir), work)
  asif_program.run(_config(env, stage="embed-anchors", anchors_dir=store_dir,
                           **{"anchors.source": "tsv:" + env["more"],
                              "anchors.append": True}), work)
  starts = []
  real_search = relative.Searcher.search

  def spy(self, queries, chunks, start=None):
    starts.append(None if start is None else start.num_anchors)
    return real_search(self, queries, chunks, start)

  monkeypatch.setattr(relative.Searcher, "search", spy)
  updated = asif_program.run(_config(env, stage="evaluate", datasets=dataset,
                                     anchors_dir=store_dir), work)
  assert starts == [24, 24]  # image and text rows: only anchors 24..32 were searched
  monkeypatch.undo()
  fresh_work = str(tmp_path / "fresh")
  fresh = asif_program.run(_config(env, stage="evaluate", datasets=dataset,
                                   anchors_dir=store_dir,
                                   **{"asif.reuse_reps": False, "asif.anchor_chunk": 16}),
                           fresh_work)
  assert updated == fresh
  name = os.path.basename(results_lib.predictions_path("", dataset))
  a = np.load(os.path.join(work, "asif_reps", name))
  b = np.load(os.path.join(fresh_work, "asif_reps", name))
  assert int(a["num_anchors"]) == 33
  for key in ("image_idx", "image_sims", "text_idx", "text_sims"):
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_tfds_anchors_and_dataset(env, tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    results = asif_program.run(_config(
        env, datasets="cifar100", data_dir=str(tmp_path / "tfds"),
        **{"anchors.source": "tfds:coco_captions"}), str(tmp_path / "work"))
  assert results["cifar100"]["num_examples"] == 20
  assert AnchorStore.open(str(tmp_path / "work" / "anchors")).num_anchors == 20


@pytest.fixture(scope="module")
def embedded(env, tmp_path_factory):
  work = str(tmp_path_factory.mktemp("asif_errors"))
  asif_program.run(_config(env, stage="embed-anchors"), work)
  return work


@pytest.mark.parametrize("overrides, message", [
    ({"asif.k": 30}, r"k=30 is larger than the number of anchors in .* \(24\); set "
                     r"--config.asif.k to at most 24"),
    ({"stage": "train"}, r"config.stage='train': give one or both of \['embed-anchors', "
                         r"'evaluate'\]"),
    ({"asif.rule": "vote"}, "config.asif.rule='vote' is not one of"),
    ({"asif.top_k": "gpu"}, r"config.asif.top_k='gpu' is not one of \['auto', 'host', 'xla'\]"),
    ({"evals.asif.templates": "clip"}, "config.evals.asif.templates='clip'"),
    ({"evals.asif.type": "vqa"}, "config.evals.asif.type='vqa': expected one of"),
    ({"text_encoder.pooling": "cls", "stage": "evaluate"},
     r"was embedded with the text encoder bert .*differs in \['pooling', 'fingerprint'\]"),
    ({"anchors_dir": "/nonexistent/store", "stage": "evaluate"}, "has no manifest.json"),
    ({"anchors.source": "", "stage": "embed-anchors"}, "config.anchors.source is not set"),
    ({"asif.query_chunk": 12}, r"query_chunk=12 must be a positive multiple of the number of "
                          r"devices \(8\)"),
])
def test_program_user_errors(env, image_folder, embedded, overrides, message):
  work = embedded  # a complete store of 24 anchors, shared by the cases
  config = _config(env, datasets="folder:" + image_folder, **overrides)
  with pytest.raises(UserError, match=message):
    asif_program.run(config, work)
  assert not os.path.exists(os.path.join(work, "results.json"))


def _launch(workdir, overrides, devices=1, extra_env=None):
  return procs.launch(f"{CONFIG}:tiny", workdir, overrides, devices, extra_env)


def test_binary_two_processes_equal_one_and_user_errors(env, image_folder, tmp_path):
  common = {"anchors.source": "tsv:" + env["anchors"], "image_encoder.checkpoint": env["vit"],
            "text_encoder.checkpoint": env["bert"], "evals.asif.datasets": "folder:" + image_folder,
            "evals.asif.save_predictions": True, "evals.asif.batch_size": 4,
            "asif.query_chunk": 8}
  port = procs.free_port()
  running = {"single": _launch(tmp_path / "single", common)}
  for i in range(2):
    running[f"multi{i}"] = _launch(tmp_path / "multi", common, devices=2,
                                   extra_env=procs.process_env(port, 2, i))
  bad = tmp_path / "bad.tsv"
  bad.write_text(open(env["anchors"]).read().replace("\tmy red square 2", "\t"))
  errors = {"counts": ({**common, "anchors.source": f"tsv:{bad}"},
                       "every pair needs an image and a caption, but there are 24 images and "
                       "23 captions"),
            "k": ({**common, "asif.k": 99}, "k=99 is larger than the number of anchors")}
  for name, (overrides, _) in errors.items():
    running[name] = _launch(tmp_path / name, overrides)
  out = {name: procs.wait(p)[1:] + (p.returncode,) for name, p in running.items()}
  for name in ("single", "multi0", "multi1"):
    assert out[name][2] == 0, out[name][1][-3000:]
  results = {n: json.loads((tmp_path / n / "results.json").read_text())
             for n in ("single", "multi")}
  assert results["single"] == results["multi"]
  assert results["single"]["folder:" + image_folder]["num_examples"] == 21
  name = os.path.basename(results_lib.predictions_path("", "folder:" + image_folder))
  preds = {n: np.load(tmp_path / n / "predictions" / name) for n in ("single", "multi")}
  np.testing.assert_array_equal(preds["single"]["labels"], preds["multi"]["labels"])
  np.testing.assert_allclose(preds["single"]["logits"], preds["multi"]["logits"], rtol=1e-4)
  # The two hosts embedded alternate shards of one store.
  stores = {n: AnchorStore.open(str(tmp_path / n / "anchors")) for n in ("single", "multi")}
  np.testing.assert_allclose(stores["single"].rows("image", 0, 24),
                             stores["multi"].rows("image", 0, 24), atol=1e-5)
  for name, (_, message) in errors.items():
    _, err, rc = out[name]
    assert rc == 2, (name, err[-2000:])
    lines = [l for l in err.splitlines() if l.startswith("zoomshot_jax: error:")]
    assert len(lines) == 1 and message in lines[0], (name, err[-2000:])
    assert "Traceback" not in err
    assert not (tmp_path / name / "results.json").exists()
