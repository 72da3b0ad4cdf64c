"""Repository contracts: CI runs exactly the README's test command."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
  with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
    return f.read()


def test_ci_runs_the_readme_test_command():
  blocks = re.findall(r"```bash\n(.*?)\n```", _read("README.md"), flags=re.S)
  test_cmds = [b for b in blocks if "pytest" in b and "\n" not in b]
  assert len(test_cmds) == 1, test_cmds
  ci_lines = [l for l in _read(".ci", "run").splitlines() if l and not l.startswith("#")]
  assert test_cmds[0] in ci_lines


def test_readme_has_no_placeholders():
  assert "PLACEHOLDER" not in _read("README.md")


def _modules(folder):
  for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
    for f in sorted(files):
      if f.endswith(".py"):
        yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def _imports(path):
  import ast  # pylint: disable=g-import-not-at-top
  names = set()
  for node in ast.walk(ast.parse(_read(path))):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def test_training_core_names_no_method():
  """training/ is method-free: a new method needs no change there."""
  methods = ("zoomshot", "text_to_concept", "asif", "clip_td", "distill")
  for path in _modules("zoomshot_jax/training"):
    if path.endswith("features.py"):  # the frozen-encoder feature cache, not the core
      continue
    for name in _imports(path):
      assert not any(m in name.split(".") for m in methods), (path, name)
      assert not name.startswith(("zoomshot_jax.methods", "zoomshot_jax.programs",
                                  "zoomshot_jax.models")), (path, name)


def test_programs_import_no_other_program():
  for path in _modules("zoomshot_jax/programs"):
    me = "zoomshot_jax.programs." + os.path.basename(path)[:-3]
    others = {n for n in _imports(path) if n.startswith("zoomshot_jax.programs.")} - {me}
    assert not others, (path, others)


def test_no_module_over_400_lines():
  long = {p: n for p in _modules("zoomshot_jax")
          if (n := _read(p).count("\n")) > 400}
  assert not long, long
