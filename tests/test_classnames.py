"""Class names and templates: counts against tfds, label order, get_prompts.

tfds ships each builder's label metadata (names, or at least the count) with
the package, so `tfds.builder(name).info` is available offline; the label
order is checked against those names, not against our own files.
"""

import difflib
import functools
import json
import os
import re

import pytest
import tensorflow_datasets as tfds

from zoomshot_jax.errors import UserError
from zoomshot_jax.evaluation import classnames as cn

DATASETS = ("caltech101", "caltech_birds2011", "cars196", "cifar10", "cifar100", "dtd",
            "eurosat", "food101", "imagenet2012", "oxford_flowers102", "oxford_iiit_pet",
            "sun397")
# METHODS.md: CIFAR 18 templates, ImageNet 80, Stanford Cars 8, EuroSAT 5,
# one "... a type of X." template for Flowers, Pets, Food-101 and CUB.
TEMPLATE_COUNTS = {"cifar10": 18, "cifar100": 18, "imagenet2012": 80, "cars196": 8,
                   "eurosat": 5, "oxford_flowers102": 1, "oxford_iiit_pet": 1, "food101": 1,
                   "caltech_birds2011": 1}
TYPE_OF = {"oxford_flowers102": "flower", "oxford_iiit_pet": "pet", "food101": "food",
           "caltech_birds2011": "bird"}


def _json(name):
  """Our file, read directly (not through the module under test)."""
  path = os.path.join(os.path.dirname(cn.__file__), "classnames", name + ".json")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def tfds_labels(tmp_path_factory):
  """{dataset: tfds ClassLabel}, from metadata only (an empty data_dir)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return {n: tfds.builder(n, data_dir=data_dir).info.features["label"] for n in DATASETS}


def test_every_registered_dataset_is_tested_and_has_a_split():
  assert tuple(cn.known_datasets()) == DATASETS
  assert set(cn.DEFAULT_SPLITS) == set(DATASETS)


@pytest.mark.parametrize("name", DATASETS)
def test_class_count_matches_tfds_and_templates_are_valid(name, tfds_labels):
  d = _json(name)
  names, templates = d["classnames"], d["templates"]
  assert len(names) == tfds_labels[name].num_classes
  assert all(isinstance(n, str) and n == n.strip() and n for n in names)
  # Zero-shot cannot tell apart two classes with one name. ImageNet keeps
  # CLIP's two known duplicates (missile 657/744, sunglasses 836/837).
  dups = {n for n in names if names.count(n) > 1}
  assert dups == ({"missile", "sunglasses"} if name == "imagenet2012" else set())
  assert templates and len(set(templates)) == len(templates)
  for t in templates:
    assert t.count("{}") == 1 and t.replace("{}", "").count("{") == 0, t
    assert "x" in t.format("x")
  if name in TEMPLATE_COUNTS:
    assert len(templates) == TEMPLATE_COUNTS[name]
  if name in TYPE_OF:
    assert templates[0].endswith(f", a type of {TYPE_OF[name]}.")
  assert d["source"].strip()
  # The module serves the file as is.
  prompts = cn.get_prompts(name, len(names))
  assert prompts.classnames == tuple(names) and prompts.templates == tuple(templates)


# --- Label order against tfds label names -----------------------------------

_STOP = frozenset({"a", "an", "the", "of", "and", "or"})


@functools.lru_cache(maxsize=None)
def _compact(name):
  return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.lru_cache(maxsize=None)
def _words(name):
  """Lower-case words without stop words; apostrophes dropped, any other
  non-alphanumeric splits; a plural -s dropped (airplanes ~ airplane)."""
  words = re.sub(r"[^a-z0-9]+", " ", name.lower().replace("'", "")).split()
  return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") else w
                   for w in words if w not in _STOP)


def _tfds_name(dataset, label):
  """A tfds label as words: sun397's '/a/' prefix and '_' / '/' dropped."""
  if dataset == "sun397":
    label = re.sub(r"^/[a-z]/", "", label)
  return label.replace("_", " ").replace("/", " ")


def _score(ours, theirs, aliases):
  """1.0: the same name up to case and punctuation, or a listed renaming;
  else the larger of word overlap (Jaccard) and character similarity, < 1."""
  if _compact(ours) == _compact(theirs) or aliases.get(_compact(theirs)) == _compact(ours):
    return 1.0
  a, b = _words(ours), _words(theirs)
  jaccard = len(a & b) / len(a | b) if a | b else 0.0
  ratio = difflib.SequenceMatcher(None, _compact(ours), _compact(theirs)).ratio()
  return min(max(jaccard, ratio), 0.99)


def _order_problem(ours, theirs, aliases=None, threshold=0.6):
  """The first class whose name does not match its tfds label, or None.

  A name that is not an exact match must score at least `threshold` with its
  own label AND more than with every other label: then swapping any two
  classes makes at least one of them fail (an exact match elsewhere, or a
  better-scoring rival, is exactly what a swap produces).
  """
  aliases = {_compact(k): _compact(v) for k, v in (aliases or {}).items()}
  assert len(ours) == len(theirs)
  for i, (a, t) in enumerate(zip(ours, theirs)):
    s = _score(a, t, aliases)
    if s == 1.0:
      continue
    if s < threshold:
      return f"class {i}: {a!r} vs tfds {t!r} (score {s:.2f})"
    for j, other in enumerate(theirs):
      if j != i and _score(a, other, aliases) >= s:
        return f"class {i}: {a!r} matches tfds {j} {other!r} at least as well as {t!r}"
  return None


# CLIP's renamings that no spelling rule recovers, tfds label -> our name.
# Caltech101: "Faces" are uncropped (off-centre) faces, "Faces_easy" the
# cropped, centred ones.
ALIASES = {
    "caltech101": {"faces": "off-center face", "faces easy": "centered face",
                   "snoopy": "snoopy (cartoon beagle)"},
    "oxford_flowers102": {"ball moss": "air plant"},  # Tillandsia recurvata
}
WORD_DATASETS = ("oxford_iiit_pet", "food101", "dtd", "sun397", "oxford_flowers102",
                 "caltech101")


@pytest.mark.parametrize("name", WORD_DATASETS)
def test_class_names_in_tfds_label_order(name, tfds_labels):
  ours = _json(name)["classnames"]
  theirs = [_tfds_name(name, t) for t in tfds_labels[name].names]
  aliases = ALIASES.get(name)
  assert _order_problem(ours, theirs, aliases) is None, _order_problem(ours, theirs, aliases)
  # The check itself must catch a swap: of neighbours, of far-apart classes,
  # and of the renamed ones.
  k = len(ours)
  pairs = [(0, 1), (k // 2, k // 2 + 1), (3, k - 2)]
  pairs += [(i, i + 1) for i, t in enumerate(theirs[:-1])
            if _compact(t) in {_compact(a) for a in (aliases or {})}]
  for i, j in pairs:
    swapped = list(ours)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert _order_problem(swapped, theirs, aliases) is not None, (i, j)


def test_cars196_names_are_tfds_names_as_word_sets(tfds_labels):
  ours = _json("cars196")["classnames"]
  theirs = tfds_labels["cars196"].names

  def bag(s):
    return frozenset(s.lower().split())

  assert len({bag(t) for t in theirs}) == len(theirs)  # so a swap must show
  bad = [(i, a, t) for i, (a, t) in enumerate(zip(ours, theirs)) if bag(a) != bag(t)]
  assert not bad, bad[:5]


def test_eurosat_mapping(tfds_labels):
  """CLIP's descriptive EuroSAT names, against the tfds labels by hand."""
  want = {"AnnualCrop": "annual crop land", "Forest": "forest",
          "HerbaceousVegetation": "brushland or shrubland", "Highway": "highway or road",
          "Industrial": "industrial buildings or commercial buildings",
          "Pasture": "pasture land", "PermanentCrop": "permanent crop land",
          "Residential": "residential buildings or homes or apartments", "River": "river",
          "SeaLake": "lake or sea"}
  labels = tfds_labels["eurosat"].names
  assert sorted(labels) == sorted(want)
  assert _json("eurosat")["classnames"] == [want[label] for label in labels]
  assert all("satellite" in t for t in _json("eurosat")["templates"])


def test_cifar_names_in_label_order():
  # CIFAR's label names come with the data, not with tfds' metadata.
  assert _json("cifar10")["classnames"] == [
      "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
  names = _json("cifar100")["classnames"]
  # The fine labels are numbered in alphabetical order of their underscored names.
  underscored = [n.replace(" ", "_") for n in names]
  assert underscored == sorted(underscored)
  assert names[:5] == ["apple", "aquarium fish", "baby", "bear", "beaver"]
  assert names[-3:] == ["wolf", "woman", "worm"]


def test_cub_names_in_class_id_order():
  names = _json("caltech_birds2011")["classnames"]
  assert names[:4] == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross",
                       "Groove billed Ani"]
  assert names[-1] == "Common Yellowthroat"
  assert not any(re.match(r"\d", n) or "_" in n for n in names)


# A WordNet synonym -> CLIP's name, where CLIP chose other words.
IMAGENET_ALIASES = {
    "cock": "rooster", "eft": "newt", "peacock": "peafowl", "drake": "duck",
    "black and gold garden spider": "yellow garden spider", "anemone fish": "clownfish",
    "coffeepot": "coffeemaker", "crib": "infant bed", "jack-o'-lantern": "carved pumpkin",
    "Loafer": "slip-on shoe", "mailbag": "messenger bag", "maillot": "tights",
    "mortarboard": "graduation cap", "motor scooter": "vespa", "nipple": "baby pacifier",
    "oxcart": "bullock cart", "panpipe": "pan flute", "running shoe": "sneaker",
    "speedboat": "motorboat", "stole": "scarf", "sunglass": "sunglasses", "toyshop": "toy store",
    "vault": "vaulted or arched ceiling", "washbasin": "sink", "wreck": "shipwreck",
    "yawl": "sailboat", "French loaf": "baguette", "alp": "mountain", "seashore": "beach",
    "earthstar": "earth star fungus", "ear": "corn cob",
}


def _synonym_score(name, synonyms):
  """1.0 for the same spelling or a listed renaming, else the best word overlap."""
  best = 0.0
  for s in synonyms:
    if IMAGENET_ALIASES.get(s) == name or _compact(s) == _compact(name):
      return 1.0
    a, b = _words(name), _words(s)
    best = max(best, len(a & b) / max(len(a | b), 1))
  return best


def _imagenet_problem(ours, synsets):
  """The first name that does not fit the synset at its index, or None.

  Each name must share a word with, or nearly spell, a synonym of its own
  synset, and fit it at least as well as the ten synsets on either side:
  WordNet order puts similar classes near each other (tiger shark,
  hammerhead shark), which a shared word alone would not tell apart.
  """
  for i, name in enumerate(ours):
    own = _synonym_score(name, synsets[i])
    if own == 0 and not any(
        difflib.SequenceMatcher(None, _compact(name), _compact(s)).ratio() >= 0.8
        for s in synsets[i]):
      return f"class {i}: {name!r} vs WordNet {synsets[i]}"
    for j in range(max(0, i - 10), min(len(ours), i + 11)):
      if j != i and _synonym_score(name, synsets[j]) > own:
        return f"class {i}: {name!r} fits synset {j} {synsets[j]} better than {synsets[i]}"
  return None


def test_imagenet_names_in_wordnet_id_order():
  """CLIP renamed many ImageNet classes, so the check is by shared words.

  tfds labels ImageNet by sorted WordNet id, the order of the synset list tfds
  itself ships (with the SI-Score labels)."""
  labels_mod = pytest.importorskip("tensorflow_datasets.datasets.siscore.labels")
  synsets = [[s.strip() for s in x.split(",")] for x in labels_mod.IMAGENET_LABELS_LIST]
  assert len(synsets) == 1000
  ours = _json("imagenet2012")["classnames"]
  assert _imagenet_problem(ours, synsets) is None, _imagenet_problem(ours, synsets)
  for i, name in ((0, "tench"), (1, "goldfish"), (207, "Golden Retriever"), (281, "tabby cat"),
                  (409, "analog clock"), (517, "construction crane"), (999, "toilet paper")):
    assert ours[i] == name
  # The check catches swaps, of similar neighbours too (tiger / hammerhead
  # shark; Norfolk / Norwich terrier).
  for i, j in ((0, 1), (3, 4), (185, 186), (180, 185), (500, 900)):
    swapped = list(ours)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert _imagenet_problem(swapped, synsets) is not None, (i, j)


# --- get_prompts ---------------------------------------------------------------

def test_count_mismatch_names_both_counts():
  with pytest.raises(UserError) as e:
    cn.get_prompts("cifar10", 11)
  assert "cifar10" in str(e.value) and "11" in str(e.value) and "10" in str(e.value)


def test_classnames_file_override_json_and_txt(tmp_path):
  as_json = tmp_path / "names.json"
  as_json.write_text(json.dumps(["red square", "green circle", "blue triangle"]))
  p = cn.get_prompts("cifar10", 3, classnames_file=str(as_json))
  assert p.classnames == ("red square", "green circle", "blue triangle")
  assert p.templates == tuple(_json("cifar10")["templates"])  # the dataset's templates stay
  assert str(as_json) in p.source

  as_txt = tmp_path / "names.txt"
  as_txt.write_text("  red square\n\ngreen circle  \nblue triangle\n")
  p = cn.get_prompts("folder:/data/shapes", 3, label_names=["0", "1", "2"],
                     classnames_file=str(as_txt))
  assert p.classnames == ("red square", "green circle", "blue triangle")
  assert p.templates == cn.DEFAULT_TEMPLATES == ("a photo of a {}.",)
  with pytest.raises(UserError, match="2 classes but 3"):
    cn.get_prompts("folder:/data/shapes", 2, classnames_file=str(as_txt))


@pytest.mark.parametrize("content,what", [("{\"a\": 1}", "JSON list"), ("[]", "empty"),
                                          ("[\"a\", 2]", "JSON list")])
def test_bad_classnames_file(tmp_path, content, what):
  path = tmp_path / "names.json"
  path.write_text(content)
  with pytest.raises(UserError, match=what) as e:
    cn.get_prompts("cifar10", 10, classnames_file=str(path))
  assert str(path) in str(e.value)


def test_missing_classnames_file(tmp_path):
  path = str(tmp_path / "nope.txt")
  with pytest.raises(UserError, match="does not exist") as e:
    cn.get_prompts("cifar10", 10, classnames_file=path)
  assert path in str(e.value)


def test_templates_file(tmp_path):
  good = tmp_path / "templates.txt"
  good.write_text("a photo of a {}.\nan image of the {}.\n")
  p = cn.get_prompts("cifar10", 10, templates_file=str(good))
  assert p.templates == ("a photo of a {}.", "an image of the {}.")
  assert p.classnames == tuple(_json("cifar10")["classnames"])
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(["a photo of a {}.", "a photo of a cat.", "a {name} photo."]))
  with pytest.raises(UserError) as e:
    cn.get_prompts("cifar10", 10, templates_file=str(bad))
  msg = str(e.value)
  assert str(bad) in msg and "'{}'" in msg
  assert "a photo of a cat." in msg and "a {name} photo." in msg


@pytest.mark.parametrize("label_names", [None, [], ["0", "1", "2"], ["001", "002", "003"],
                                         ["n01440764", "n01443537", "n01484850"]])
def test_unknown_dataset_without_word_labels_asks_for_classnames_file(label_names):
  with pytest.raises(UserError) as e:
    cn.get_prompts("my_tfds_dataset", 3, label_names=label_names)
  assert "my_tfds_dataset" in str(e.value) and "classnames_file" in str(e.value)


def test_fallback_to_label_names():
  p = cn.get_prompts("folder:/data/pets", 3,
                     label_names=["golden_retriever", "tabby_cat", "Egyptian_Mau"])
  assert p.classnames == ("golden retriever", "tabby cat", "Egyptian Mau")
  assert p.templates == ("a photo of a {}.",)
  # tfds-style sun397 labels lose their "/x/" prefix; a "/" becomes a space.
  p = cn.get_prompts("some_scenes", 2, label_names=["/a/abbey", "/b/bakery/shop"])
  assert p.classnames == ("abbey", "bakery shop")
  with pytest.raises(UserError, match="3 classes but 2"):
    cn.get_prompts("folder:/data/pets", 3, label_names=["golden_retriever", "tabby_cat"])


def test_texts_are_class_major():
  p = cn.Prompts(("cat", "dog"), ("a {}.", "the {}!", "my {}?"), "test")
  texts = p.texts()
  assert len(texts) == 6
  assert texts[1 * 3 + 2] == "my dog?" and texts[0 * 3 + 1] == "the cat!"
