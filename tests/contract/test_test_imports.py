"""Tests share helpers through `tests/support/` only.

No test module imports another test module, a conftest or a helper kept beside
the tests: a module under `tests/` may import from `tests.` only what is in
`tests.support` (fixtures stay in conftest files, which pytest finds itself).
Dynamic imports (`importlib`, `__import__`) of test modules count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _allowed(module: str) -> bool:
    return not (module == "tests" or module.startswith("tests.")) or (
        module == "tests.support" or module.startswith("tests.support.")
    )


def _offending_imports(path: Path, root: Path = TESTS.parent) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x` reaches a sibling test module
                modules = ["." * node.level + (node.module or "")]
            elif node.module == "tests":
                modules = [f"tests.{alias.name}" for alias in node.names]
            elif node.module:
                modules = [node.module]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules = [node.args[0].value]
        for module in modules:
            if module.startswith(".") or not _allowed(module):
                found.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}: {module}")
    return found


def test_tests_import_shared_helpers_from_tests_support_only() -> None:
    offending = [hit for path in sorted(TESTS.rglob("*.py")) for hit in _offending_imports(path)]
    assert offending == [], "move what is shared into tests/support/ and import it from there"


def test_the_rule_catches_a_conftest_import(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text(
        "from tests.unit.interceptors.conftest import channel\n"
        "import tests.e2e.test_edge\n"
        "from tests import conftest\n"
        "from .helpers import thing\n"
        "from tests.support.poll import eventually\n"
    )
    found = [hit.split(": ", 1)[1] for hit in _offending_imports(module, tmp_path)]
    assert found == [
        "tests.unit.interceptors.conftest",
        "tests.e2e.test_edge",
        "tests.conftest",
        ".helpers",
    ]
