"""Fixtures shared by every test layer live in tests/support/; this file only wires them in."""

from __future__ import annotations

import pathlib
import sys

import pytest

# generated/ holds the `shop` package; importable without installing the project too.
_GENERATED = pathlib.Path(__file__).resolve().parents[1] / "generated"
if str(_GENERATED) not in sys.path:
    sys.path.insert(0, str(_GENERATED))


# Suites that start the whole shop as processes: `make test-fast` (-m "not slow") skips them.
_SLOW_DIRS = ("tests/e2e/", "tests/integration/shop/", "tests/integration/shop_events/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.as_posix()
        if any(f"/{d}" in path for d in _SLOW_DIRS):
            item.add_marker(pytest.mark.slow)
