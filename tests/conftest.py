"""Fixtures shared by every test layer live in tests/support/; this file only wires them in."""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Iterator

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


@pytest.fixture(autouse=True, scope="session")
def _mesh_test_pki() -> Iterator[None]:
    """mTLS is on in every test: services find the test CA through MESH_PKI_DIR."""
    from tests.support.pki import session_pki

    previous = os.environ.get("MESH_PKI_DIR")
    os.environ["MESH_PKI_DIR"] = session_pki().pki_dir
    yield
    if previous is None:
        os.environ.pop("MESH_PKI_DIR", None)
    else:
        os.environ["MESH_PKI_DIR"] = previous
