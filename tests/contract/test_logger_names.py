"""One logger naming scheme: every module logs to `logging.getLogger(__name__)`.

So a logger's name is where the line comes from, and `logging.getLogger("mesh")`
(or "interceptors", "services.orders") configures a whole layer or service.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("base", "interceptors", "mesh", "services")


def _named_loggers() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"
                    and not (
                        len(node.args) == 1
                        and isinstance(node.args[0], ast.Name)
                        and node.args[0].id == "__name__"
                    )
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_logger_is_named_after_its_module() -> None:
    assert _named_loggers() == [], "use logging.getLogger(__name__)"
