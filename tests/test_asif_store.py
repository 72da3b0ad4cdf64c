"""ASIF anchor sources, the anchor store, and resumable embedding into it."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from zoomshot_jax import data, encoders, evaluation
from zoomshot_jax.asif import embed, store as store_lib, toy
from zoomshot_jax.asif.sources import get_anchor_source
from zoomshot_jax.encoders import testing
from zoomshot_jax.errors import UserError


def write_pairs(root, per_class=6, seed=5):
  """Captioned toy images and their TSV; returns (path, [(image, caption)])."""
  path = toy.write_anchors(root, per_class, seed)
  with open(path) as f:
    return path, [tuple(line.split("\t")) for line in f.read().splitlines()[1:]]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  return write_pairs(str(tmp_path_factory.mktemp("pairs")))


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory):
  root = tmp_path_factory.mktemp("asif_encoders")
  vit = encoders.load_vision_encoder("vit", testing.save_tiny_vision("vit", str(root / "vit")))
  bert = encoders.load_text_encoder("bert", testing.save_tiny_text("bert", str(root / "bert")))
  return vit, bert


def _read(source, start, end):
  return list(source.dataset(start, end).as_numpy_iterator())


def test_tsv_jsonl_and_tfrecord_sources_agree(pairs, tmp_path):
  tsv, rows = pairs
  base = os.path.dirname(tsv)
  jsonl = tmp_path / "anchors.jsonl"
  jsonl.write_text("".join(json.dumps({"img": os.path.join(base, p), "txt": c}) + "\n"
                           for p, c in rows))
  records = [tmp_path / "a-0.tfrecord", tmp_path / "a-1.tfrecord"]
  for i, path in enumerate(records):  # 7 + 11 records: a row range crosses files
    with tf.io.TFRecordWriter(str(path)) as w:
      for p, c in rows[:7] if i == 0 else rows[7:]:
        with open(os.path.join(base, p), "rb") as f:
          feat = {"jpg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.read()])),
                  "txt": tf.train.Feature(bytes_list=tf.train.BytesList(value=[c.encode()]))}
        w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
  sources = {"tsv": get_anchor_source(f"tsv:{tsv}"),
             "jsonl": get_anchor_source(f"jsonl:{jsonl}", "img", "txt"),
             "tfrecord": get_anchor_source(f"tfrecord:{tmp_path}/a-*.tfrecord", "jpg", "txt")}
  assert {s.num_examples for s in sources.values()} == {18}
  assert sources["tfrecord"].options["file_counts"] == [7, 11]
  ref = _read(sources["tsv"], 5, 12)
  assert [r["caption"].decode() for r in ref] == [c for _, c in rows[5:12]]
  for name, source in sources.items():
    got = _read(source, 5, 12)
    assert [g["caption"] for g in got] == [r["caption"] for r in ref], name
    for g, r in zip(got, ref):
      np.testing.assert_array_equal(g["image"], r["image"])
  assert get_anchor_source(f"tsv:{tsv}", max_examples=4).num_examples == 4
  # The counts kept in a manifest are reused, not recounted.
  known = {"files": sources["tfrecord"].options["files"], "file_counts": [7, 11]}
  again = get_anchor_source(f"tfrecord:{tmp_path}/a-*.tfrecord", "jpg", "txt", known=known)
  assert again.num_examples == 18


def test_tfds_coco_captions_source(tmp_path):
  with tfds.testing.mock_data(num_examples=9):
    source = get_anchor_source("tfds:coco_captions", split="train")
    assert source.num_examples == 9
    whole = _read(source, 0, 9)
    part = _read(source, 3, 6)
  assert [p["caption"] for p in part] == [w["caption"] for w in whole[3:6]]
  assert all(w["image"].ndim == 3 and w["image"].shape[-1] == 3 for w in whole)


@pytest.mark.parametrize("content, message", [
    ("image\tcaption\nimg/a.png\tcat\nimg/b.png\t\n",
     r"there are 2 images and 1 captions \(no 'image' on lines \[\], no 'caption' on lines \[3\]"),
    ("path\tcaption\nimg/a.png\tcat\n", r"lacks the columns \['image'\]"),
    ("image\tcaption\nimg/none.png\tcat\n", r"1 of 1 image files are missing"),
    ("", "is empty"),
])
def test_bad_anchor_files(tmp_path, content, message):
  path = tmp_path / "bad.tsv"
  path.write_text(content)
  (tmp_path / "img").mkdir()
  for f in ("a.png", "b.png"):
    (tmp_path / "img" / f).write_bytes(b"")
  with pytest.raises(UserError, match=message):
    get_anchor_source(f"tsv:{path}")


def test_bad_anchor_specs(tmp_path):
  with pytest.raises(UserError, match="expected <kind>:<path or name>"):
    get_anchor_source("cc3m.tsv")
  with pytest.raises(UserError, match="does not exist"):
    get_anchor_source(f"jsonl:{tmp_path}/none.jsonl")
  with pytest.raises(UserError, match="no files match"):
    get_anchor_source(f"tfrecord:{tmp_path}/*.tfrecord")
  with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as w:
    feat = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}
    w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
  with pytest.raises(UserError, match=r"have the features \['image'\], not \['jpg', 'txt'\]"):
    get_anchor_source(f"tfrecord:{tmp_path}/x.tfrecord", "jpg", "txt")


def _embed(path, source, tiny_encoders, append=False):
  vit, bert = tiny_encoders
  return embed.embed_anchors(str(path), source, vit, bert, shard_size=8, batch_size=8,
                             text_batch_size=8, append=append)


def test_store_holds_the_encoders_embeddings(pairs, tiny_encoders, tmp_path):
  tsv, rows = pairs
  source = get_anchor_source(f"tsv:{tsv}")
  store = _embed(tmp_path / "store", source, tiny_encoders)
  assert store.num_anchors == 18 and [r for _, _, r in store.shards()] == [8, 8, 2]
  store.check_complete()
  vit, bert = tiny_encoders
  # Independently: the checkpoint's preprocessing, the encoder, NumPy norms.
  images = np.stack([data.preprocess_image(r["image"], vit.preprocess).numpy()
                     for r in _read(source, 0, 18)])
  feats = np.asarray(vit.image_features(vit.variables, images))
  np.testing.assert_allclose(store.rows("image", 0, 18),
                             feats / np.linalg.norm(feats, axis=1, keepdims=True), atol=2e-5)
  np.testing.assert_allclose(store.rows("text", 3, 11),
                             evaluation.encode_texts(bert, [c for _, c in rows[3:11]], 8),
                             atol=2e-5)
  assert store.captions([0, 17]) == [rows[0][1], rows[17][1]]
  info = json.loads((tmp_path / "store" / "manifest.json").read_text())
  assert info["image_encoder"]["dim"] == 32 and info["text_encoder"]["dim"] == 24


def test_embedding_resumes_and_appends(pairs, tiny_encoders, tmp_path, monkeypatch):
  tsv, _ = pairs
  source = get_anchor_source(f"tsv:{tsv}")
  whole = _embed(tmp_path / "whole", source, tiny_encoders)
  # A run killed after its first shard: the shard is on disk, the rest not.
  real_write, written = store_lib.AnchorStore.write_shard, []

  def dies_after_one(self, i, *arrays):
    if written:
      raise KeyboardInterrupt("killed")
    written.append(i)
    real_write(self, i, *arrays)

  monkeypatch.setattr(store_lib.AnchorStore, "write_shard", dies_after_one)
  with pytest.raises(KeyboardInterrupt):
    _embed(tmp_path / "resumed", source, tiny_encoders)
  monkeypatch.undo()
  first = tmp_path / "resumed" / "shard-00000.npz"
  stamp = os.stat(first).st_mtime_ns
  with pytest.raises(UserError, match="is incomplete: 2 of 3 shard files are missing"):
    store_lib.AnchorStore.open(str(tmp_path / "resumed")).check_complete()
  resumed = _embed(tmp_path / "resumed", source, tiny_encoders)
  assert os.stat(first).st_mtime_ns == stamp  # shard 0 was not embedded again
  for kind in ("image", "text", "caption"):
    np.testing.assert_array_equal(resumed.rows(kind, 0, 18), whole.rows(kind, 0, 18))
  # Adding anchors is a data update: a second source's pairs come after.
  more, more_rows = write_pairs(str(tmp_path / "more"), per_class=2, seed=9)
  with pytest.raises(UserError, match="set --config.anchors.append=True"):
    _embed(tmp_path / "resumed", get_anchor_source(f"tsv:{more}"), tiny_encoders)
  grown = _embed(tmp_path / "resumed", get_anchor_source(f"tsv:{more}"), tiny_encoders,
                 append=True)
  assert grown.num_anchors == 24 and len(grown.parts) == 2
  np.testing.assert_array_equal(grown.rows("image", 0, 18), whole.rows("image", 0, 18))
  assert grown.captions([18, 23]) == [more_rows[0][1], more_rows[5][1]]


def test_store_refuses_foreign_or_broken_files(pairs, tiny_encoders, tmp_path):
  tsv, _ = pairs
  store = _embed(tmp_path / "s", get_anchor_source(f"tsv:{tsv}"), tiny_encoders)
  vit, bert = tiny_encoders
  other = encoders.load_text_encoder("bert", bert.checkpoint, pooling="cls")
  with pytest.raises(UserError, match=r"was embedded with the text encoder bert .* "
                     r"\(differs in \['pooling', 'fingerprint'\]\)"):
    store.check_encoders(store_lib.encoder_info(vit, "image"),
                         store_lib.encoder_info(other, "text"))
  shard1 = store.shard_path(1)
  arrays = dict(np.load(shard1))
  np.savez(shard1, **{**arrays, "image": arrays["image"][:, :16]})  # another encoder's dim
  fresh = store_lib.AnchorStore.open(str(tmp_path / "s"))
  with pytest.raises(UserError, match=r"shard-00001.npz' holds image embeddings of shape "
                     r"\(8, 16\), but .* gives dimension 32"):
    fresh.rows("image", 0, 18)
  np.savez(shard1, **{**arrays, "text": arrays["text"][:7]})  # 8 images, 7 texts
  with pytest.raises(UserError, match="holds 7 text rows, but the manifest says the shard "
                     "has 8 image–caption pairs"):
    store_lib.AnchorStore.open(str(tmp_path / "s")).rows("text", 0, 18)
  os.remove(shard1)
  with pytest.raises(UserError, match=r"1 of 3 shard files are missing \(e.g. \['shard-00001"):
    store_lib.AnchorStore.open(str(tmp_path / "s")).check_complete()
  with pytest.raises(UserError, match="anchor file .*shard-00001.npz' is missing"):
    store_lib.AnchorStore.open(str(tmp_path / "s")).rows("image", 0, 18)
  with pytest.raises(UserError, match="has no manifest.json; run the embed-anchors stage"):
    store_lib.AnchorStore.open(str(tmp_path / "none"))
