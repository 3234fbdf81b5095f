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


# Packages whose package-scoped fixtures start the whole shop: under pytest-xdist
# (`make test` runs two workers, --dist loadgroup) all their modules stay on one worker,
# so the shop starts once, not once per worker.
_SHARED_PACKAGES = ("tests/integration/shop/", "tests/integration/shop_events/")


def _xdist_group(path: str) -> str:
    """The worker group of a test file: its shared package, else the module itself (a
    module's tests share module-scoped fixtures, so splitting them would start those twice)."""
    for package in _SHARED_PACKAGES:
        if f"/{package}" in path:
            return package
    return path


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups (it names items by them)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.as_posix()
        if any(f"/{d}" in path for d in _SLOW_DIRS):
            item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group(_xdist_group(path)))


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
