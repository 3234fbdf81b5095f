"""Dependencies point one way: services -> mesh -> interceptors -> base.

Every import of every module under `mesh/`, `interceptors/` and `base/` is read
with `ast` (function-level imports, `import a.b as c`, relative imports and
`importlib.import_module("literal")` included) and checked against the layer
below it. A module that needs the application's knowledge takes it as data
(the topology file, `EventTypes`, descriptors), never by importing it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# layer -> top-level packages it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "base": frozenset({"mesh", "interceptors", "services", "shop"}),
    "interceptors": frozenset({"mesh", "services", "shop"}),
    "mesh": frozenset({"services", "shop"}),
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(
    source: str, module: str, *, is_package: bool = False
) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, wherever it sits."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from pkg import module`
                yield node.lineno, f"{target}.{alias.name}" if target else alias.name
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("import_module", "__import__")
                )
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def violations_in(source: str, module: str, *, is_package: bool = False) -> list[str]:
    layer = module.split(".")[0]
    forbidden = FORBIDDEN[layer]
    return [
        f"{module}:{line} imports {name}"
        for line, name in imported_modules(source, module, is_package=is_package)
        if name.split(".")[0] in forbidden
    ]


def _layer_files() -> Iterator[Path]:
    for layer in FORBIDDEN:
        yield from sorted((ROOT / layer).rglob("*.py"))


def test_layers_import_only_what_is_below_them() -> None:
    found = []
    checked = 0
    for path in _layer_files():
        module = _module_name(path, ROOT)
        found += violations_in(path.read_text(), module, is_package=path.name == "__init__.py")
        checked += 1
    assert checked > 50  # really walked the tree
    assert found == [], "imports against the layer direction:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("mesh.events.x", "from shop.events.v1 import events_pb2\n", "imports shop.events.v1"),
        (
            "mesh.x",
            "def f():\n    import services.orders as o\n",
            "mesh.x:2 imports services.orders",
        ),
        (
            "mesh.x",
            "import importlib\nimportlib.import_module('services.tools')\n",
            "services.tools",
        ),
        ("interceptors.retry", "from mesh.api import options\n", "imports mesh.api"),
        ("interceptors.retry", "from .. import mesh\n", "imports mesh"),
        ("base.errors", "async def f():\n    from interceptors import errors\n", "interceptors"),
        ("base.errors", "from services.common import config\n", "imports services.common"),
    ],
)
def test_the_check_sees_every_kind_of_import(module: str, source: str, expected: str) -> None:
    found = violations_in(source, module)
    assert any(expected in v for v in found), found


def test_imports_downward_are_allowed() -> None:
    source = "from base.errors import NotFound\nfrom interceptors._call import split_method\n"
    assert violations_in(source, "mesh.api.options") == []
    assert violations_in("from base.backoff import Backoff\n", "interceptors.retry") == []
