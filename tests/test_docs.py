"""The documentation names tests that exist: docs/privacy.md maps each promise of the
privacy policy to a test, and a renamed or deleted test must not leave the map lying."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# "test_x.py::test_name", or "::test_name" for the file named last before it.
_REFERENCE = re.compile(r"(test_\w+\.py)?::(test_\w+)")


def _tests_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_named_in_the_privacy_map_exists():
    text = (ROOT / "docs" / "privacy.md").read_text(encoding="utf-8")
    named, missing, current = 0, [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        for file, test in _REFERENCE.findall(line):
            current = file or current
            assert current, f"{test} is named before any test file"
            named += 1
            if test not in _tests_of(ROOT / "tests" / current):
                missing.append(f"{current}::{test}")
        for file in re.findall(r"tests/(test_\w+\.py)", line):
            if not (ROOT / "tests" / file).exists():
                missing.append(file)
    assert named >= 30, "the map names tests"
    assert not missing, f"docs/privacy.md names tests that do not exist: {missing}"
