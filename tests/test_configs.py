"""configs/: every variant word and every combination of them, the one way
words are refused, no machine's paths, and toy_root moving toy's paths."""

import glob
import itertools
import os

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

import procs
from zoomshot_jax.configs import (asif, common, demo, distill, text_to_concept, vl_finetune,
                                  zeroshot_eval, zoomshot)
from zoomshot_jax.world import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {"zeroshot_eval": zeroshot_eval, "zoomshot": zoomshot,
           "text_to_concept": text_to_concept, "asif": asif, "demo": demo, "distill": distill,
           "vl_finetune": vl_finetune}
PROGRAMS = {"zeroshot_eval": "zeroshot_eval", "zoomshot": "zoomshot",
            "text_to_concept": "zoomshot", "asif": "asif", "demo": "demo", "distill": "distill",
            "vl_finetune": "vl_finetune"}
# The word each kind takes when none is given (None: the kind's effect is off).
DEFAULTS = {
    "zeroshot_eval": {"clip": "b32", "datasets": "imagenet"},
    "zoomshot": {"vision": "dinov2_b14", "clip": "b32", "regime": "20pct"},
    "text_to_concept": {"vision": "dinov2_b14", "clip": "b32", "solver": "reference"},
    "asif": {"setting": "paper", "text": None},
    "demo": {"scale": "full", "renderer": "clean"},
    "distill": {"student": "vit_tiny", "stage": "stage2", "dataset": "pets"},
    "vl_finetune": {"task": "vqa", "data": "world", "regime": "full", "scale": None,
                    "distill": "none"},
}
MACHINE_PREFIXES = ("/tmp", "/home", "/root", "/Users", "~", "/data", "/mnt")


def _key(table, value):
  """The word of `table` whose value is `value`, or "?"."""
  return next((w for w, v in table.items() if v == value), "?")


def _zoomshot_words(c):
  if "toy_root" in c:
    assert c.clip == c.toy_root + "/clip" and c.data.dataset == f"folder:{c.toy_root}/images"
    return dict.fromkeys(("vision", "clip", "regime"), "toy")
  return {"vision": _key(common.VISION, (c.vision.name, c.vision.checkpoint, c.vision.pooling)),
          "clip": _key(common.CLIPS, c.clip),
          "regime": _key(zoomshot.REGIMES, (c.data.train_fraction, c.train.epochs))}


def _asif_setting(c):
  a = c.anchors
  return _key({"paper": ("", 1_600_000, 800),
               "coco": ("tfds:coco_captions", 0, 800), "tiny": ("", 0, 8)},
              (a.source, a.max_anchors, c.asif.k))


# What each config shows of each kind's word, read back from its fields.
OBSERVE = {
    "zeroshot_eval": lambda c: {"clip": _key(common.CLIPS, c.clip),
                                "datasets": _key(common.DATASET_GROUPS,
                                                 c.evals.zeroshot.datasets)},
    "zoomshot": _zoomshot_words,
    "text_to_concept": lambda c: {
        "vision": _zoomshot_words(c)["vision"], "clip": _zoomshot_words(c)["clip"],
        "solver": _key({"reference": ("sgd", "sgd"), "closed_form": ("closed_form", "sgd")},
                       (c.zoomshot.solver, c.optimizer.name))},
    "asif": lambda c: {
        "setting": _asif_setting(c),
        "text": ("clip_text" if (c.text_encoder.name, c.text_encoder.checkpoint)
                 == ("clip", "openai/clip-vit-base-patch32") else None)},
    "demo": lambda c: {
        "scale": _key({"full": ("full", 2400, 256), "micro": ("micro", 12, 64)},
                      (c.world.scale, c.clip.steps, c.batch_size)),
        "renderer": c.world.renderer},
    "distill": lambda c: {
        "student": c.student.preset,
        "stage": _key(distill.STAGES, c.train.epochs),
        "dataset": _key({w: d for w, (d, _) in distill.DATASETS.items()},
                        c.evals.zeroshot.datasets)},
    "vl_finetune": lambda c: {
        "task": c.task, "regime": c.regime,
        "data": _key({"world": ("world", "world_tiny"), "real": ("real", "vilt_b32")},
                     (c.data.source, c.student.preset)),
        "scale": "tiny" if (c.world.train, c.train.steps) == (16, 4) else None,
        "distill": c.distill.mode},
}


def _choices(kinds):
  """Every choice of at most one word per kind: (arg, {kind: word} or None if
  refused). A word of several kinds takes all of them, so it conflicts with
  any other word of those kinds."""
  for combo in itertools.product(*[[None, *words] for words in kinds.values()]):
    picked = {k: w for k, w in zip(kinds, combo) if w is not None}
    arg = ",".join(dict.fromkeys(picked.values()))
    takes = [(k, w) for w in picked.values() for k, words in kinds.items() if w in words]
    valid = all(picked.get(k, w) == w for k, w in takes)
    yield arg, (dict(takes) if valid else None)


def _strings(tree, path=""):
  """(path, value) of every string leaf of a to_dict() tree."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _strings(v, f"{path}.{k}" if path else k)
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      yield from _strings(v, f"{path}[{i}]")
  elif isinstance(tree, str):
    yield path, tree


def _flat_keys(config):
  return {p for p, _ in _walk(config.to_dict())}


def _walk(tree, path=""):
  for k, v in tree.items():
    p = f"{path}.{k}" if path else k
    if isinstance(v, dict):
      yield from _walk(v, p)
    else:
      yield p, v


def test_every_config_is_covered():
  files = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert files - {"__init__", "common"} == set(MODULES)
  for name, module in MODULES.items():
    assert common.load(name) is module
    assert set(module.KINDS) == set(DEFAULTS[name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_combination_of_words(name):
  module = MODULES[name]
  default_keys = _flat_keys(module.get_config())
  built = refused = 0
  for arg, chosen in _choices(module.KINDS):
    if chosen is None:
      with pytest.raises(ValueError, match="conflicts with"):
        module.get_config(arg)
      refused += 1
      continue
    config = module.get_config(arg)
    assert isinstance(config, ml_collections.ConfigDict), arg
    assert config.program == PROGRAMS[name], arg
    assert OBSERVE[name](config) == {**DEFAULTS[name], **chosen}, arg
    if name == "text_to_concept":
      assert config.zoomshot.method == "text_to_concept"
    # The same words in another order are the same config.
    reordered = module.get_config(",".join(reversed(arg.split(","))))
    assert reordered.to_dict() == config.to_dict(), arg
    # Words set values, never fields (toy adds its root).
    assert _flat_keys(config) == default_keys | ({"toy_root"} if "toy_root" in config else set())
    config.to_json()              # what the binary saves as config.json
    ml_collections.FrozenConfigDict(config)
    built += 1
  # A locked config refuses unknown fields: checked once, on the defaults
  # (words set values, never fields: asserted above). Per combination it was
  # 60% of this test's time: the refusal renders the whole config as YAML.
  config = module.get_config()
  config.lock()
  with pytest.raises(AttributeError):
    config.batchsize = 1
  # Only zoomshot has a word of several kinds (toy), which the product can pair.
  assert built > 1 and (refused > 0) == (name == "zoomshot")


def test_hand_checked_words():
  assert zeroshot_eval.get_config("b16,fine_grained").clip == "openai/clip-vit-base-patch16"
  assert zeroshot_eval.get_config("l14").clip == "openai/clip-vit-large-patch14"
  groups = common.DATASET_GROUPS
  assert len(groups["fine_grained"].split(",")) == 9
  # The Zoom-shot paper's twelve evaluation datasets, ImageNet first.
  assert zoomshot.get_config().evals.zeroshot.datasets == groups["all"]
  assert groups["all"].split(",")[0] == "imagenet2012" and len(groups["all"].split(",")) == 12
  assert zoomshot.get_config("resnet50").vision.to_dict() == {
      "name": "resnet", "checkpoint": "microsoft/resnet-50", "pooling": "pooler"}
  one = zoomshot.get_config("1pct_20ep")
  assert (one.data.train_fraction, one.train.epochs) == (0.01, 20)
  assert demo.RENDERERS == render.RENDERERS


def test_no_machine_paths():
  for name, module in MODULES.items():
    for arg, chosen in _choices(module.KINDS):
      if chosen is None:
        continue
      for path, value in _strings(module.get_config(arg).to_dict()):
        # "folder:/tmp/x,cifar10": every comma-separated part, scheme dropped.
        for part in value.split(","):
          location = part.split(":", 1)[-1] if ":" in part.split("/")[0] else part
          assert not location.startswith(MACHINE_PREFIXES), (name, arg, path, value)


def test_parse_words():
  kinds = {"size": {"s": 1, "m": 2}, "colour": ("red", "blue"), "all": ("both", "s")}
  parse = lambda arg: common.parse_words(arg, kinds, "configs/x.py")
  assert parse(None) == parse("") == parse(",") == {}
  assert parse("m,red") == parse(" red , m") == {"size": "m", "colour": "red"}
  # A word of several kinds takes all of them.
  assert parse("s") == {"size": "s", "all": "s"}
  choices = "choose at most one of each kind: size: s | m; colour: red | blue; all: both | s."
  cases = {"x": "'x' is not a variant word", "m,red,m": "'m' is repeated",
           "m,s": "'s' conflicts with 'm' (both are size words)",
           "both,s": "'s' conflicts with 'both' (both are all words)",
           "red,blue": "'blue' conflicts with 'red' (both are colour words)"}
  for arg, problem in cases.items():
    with pytest.raises(ValueError) as e:
      parse(arg)
    assert str(e.value) == f"configs/x.py: {problem}; {choices}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_bad_words_name_the_word_and_every_choice(name):
  module = MODULES[name]
  words = list(dict.fromkeys(w for ws in module.KINDS.values() for w in ws))
  bad = {"nope": "is not a variant word",
         **{f"{w},{w}": "is repeated" for w in words},
         **{f"{a},{b}": f"conflicts with {a!r} (both are {kind} words)"
            for kind, ws in module.KINDS.items() for a, b in itertools.permutations(ws, 2)}}
  for arg, problem in bad.items():
    with pytest.raises(ValueError) as e:
      module.get_config(arg)
    message = str(e.value)
    assert message.startswith(f"configs/{name}.py: {arg.split(',')[-1]!r} {problem}; "), message
    assert "\n" not in message
    for kind, kind_words in module.KINDS.items():
      assert f"{kind}: {' | '.join(kind_words)}" in message
  with pytest.raises(ValueError) as e:
    zeroshot_eval.get_config("b64")
  assert str(e.value) == (
      "configs/zeroshot_eval.py: 'b64' is not a variant word; choose at most one of each kind: "
      "clip: b32 | b16 | l14; datasets: imagenet | cifar | fine_grained | all.")


def _parse_flags(argv):
  """The config the binary's flag parser gives (config_flags loads the file)."""
  argv = ["zoomshot_jax"] + argv
  values = flags.FlagValues()
  # The overrides are read from sys.argv unless sys_argv is given.
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_toy_root_moves_every_derived_path():
  path = os.path.join(ROOT, "configs", "zoomshot.py")
  default = _parse_flags([f"--config={path}:toy"])
  assert default.toy_root == "." and default.clip == "./clip"
  moved = _parse_flags([f"--config={path}:toy", "--config.toy_root=/r2/toy"])
  assert (moved.clip, moved.vision.checkpoint, moved.data.dataset,
          moved.evals.zeroshot.datasets) == (
      "/r2/toy/clip", "/r2/toy/vit", "folder:/r2/toy/images", "folder:/r2/toy/images")
  # Every field that named the root follows it; none is left behind.
  before, after = dict(_walk(default.to_dict())), dict(_walk(moved.to_dict()))
  changed = {k for k in before if before[k] != after[k]}
  assert changed == {"toy_root", "clip", "vision.checkpoint", "data.dataset",
                     "evals.zeroshot.datasets"}
  for k in changed - {"toy_root"}:
    assert after[k] == before[k].replace("./", "/r2/toy/", 1)
  # A derived field can still be set on its own; the root and the others stay.
  own = _parse_flags([f"--config={path}:toy", "--config.toy_root=/r", "--config.clip=hub/clip"])
  assert (own.clip, own.toy_root, own.vision.checkpoint) == ("hub/clip", "/r", "/r/vit")
  # text_to_concept, loaded as a file, builds on the package's zoomshot.
  t2c = _parse_flags([f"--config={os.path.join(ROOT, 'configs', 'text_to_concept.py')}:b16"])
  assert t2c.clip == common.CLIPS["b16"] and t2c.zoomshot.method == "text_to_concept"


def test_binary_reports_a_bad_word_in_one_line(tmp_path):
  proc = procs.run(["-m", "zoomshot_jax.main", "--config=configs/zeroshot_eval.py:b16,b32",
                    f"--workdir={tmp_path}"], timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("zoomshot_jax: error:")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "'b32' conflicts with 'b16' (both are clip words)" in lines[0]
  assert "clip: b32 | b16 | l14; datasets: imagenet | cifar | fine_grained | all" in lines[0]


def test_every_evaluator_group_names_a_registered_type():
  from zoomshot_jax.evaluation import registry  # pylint: disable=g-import-not-at-top
  seen = 0
  for module in MODULES.values():
    for arg, chosen in _choices(module.KINDS):
      if chosen is None:
        continue
      config = module.get_config(arg)
      for name, group in config.get("evals", {}).items():
        assert group.type in registry.EVALUATORS, (module.__name__, arg, name)
        seen += 1
  assert seen > 10
  # The evaluator's data fields follow the program's: one --config.data_dir.
  c = zoomshot.get_config()
  c.data_dir = "/data/tfds"
  assert c.evals.zeroshot.data_dir == "/data/tfds"
