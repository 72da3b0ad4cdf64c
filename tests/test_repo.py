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
