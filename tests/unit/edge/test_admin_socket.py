"""Where a local edge's admin socket is: in the run directory, or, when that path is too
long for a socket, in the account's own /tmp/meshctl-<uid>, by a name every reader of
the same run directory computes alike."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.edge import admin
from mesh.edge.admin import (
    MAX_SOCKET_PATH,
    SOCKET_NAME,
    prepare_socket,
    short_socket_dir,
    socket_in,
    socket_path_error,
)
from mesh.private_dir import NotPrivate
from tests.support.short_dir import short_tmp_dir

DEEP = "/srv/" + "a-checkout-nested-deep/" * 4 + "shop-mesh/.run/edge"


@pytest.fixture
def short(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The short directory, pointed at a name of the test's own in /tmp (pytest's tmp_path
    may be too deep itself; the real /tmp/meshctl-<uid> is shared)."""
    with short_tmp_dir() as base:
        monkeypatch.setattr(admin, "short_socket_dir", lambda: base / "meshctl")
        yield base / "meshctl"


def test_a_run_directory_of_ordinary_depth_keeps_its_socket(tmp_path: Path) -> None:
    assert socket_in(tmp_path / "edge") == tmp_path / "edge" / SOCKET_NAME


def test_a_deep_run_directory_gets_a_short_socket_named_by_it() -> None:
    deep = Path(DEEP)
    assert socket_path_error(deep / SOCKET_NAME) is not None  # what it would be is too long
    path = socket_in(deep)
    assert path.parent == short_socket_dir() == Path(f"/tmp/meshctl-{os.geteuid()}")
    assert len(os.fsencode(path)) <= MAX_SOCKET_PATH
    assert socket_in(deep) == path  # every reader finds the same one
    assert socket_in(Path(DEEP.replace("shop-mesh", "shop-mesh-2"))) != path  # another mesh


def test_a_path_too_long_for_a_socket_is_named() -> None:
    assert socket_path_error(Path("/run/mesh/edge/admin.sock")) is None
    why = socket_path_error(Path("/" + "d" * 100 + "/admin.sock"))
    assert why is not None and "at most 107" in why and "--run-dir" in why
    with pytest.raises(ValueError, match="at most 107"):
        prepare_socket(Path("/" + "d" * 100 + "/admin.sock"))


def test_the_short_directory_is_made_private(short: Path) -> None:
    path = socket_in(Path(DEEP))
    assert path.parent == short
    prepare_socket(path)
    assert stat.S_IMODE(short.stat().st_mode) == 0o700


def test_a_short_directory_another_account_could_use_is_refused(short: Path) -> None:
    """The attacker made the name first, open to it: its own socket there would answer
    the mesh's admin requests, so nothing starts."""
    short.mkdir()
    os.chmod(short, 0o777)
    with pytest.raises(NotPrivate, match=r"too deep .* open to other accounts .*--run-dir"):
        prepare_socket(socket_in(Path(DEEP)))


def test_a_socket_in_the_run_directory_needs_nothing_prepared(tmp_path: Path) -> None:
    prepare_socket(socket_in(tmp_path / "edge"))
    assert not (tmp_path / "edge").exists()  # `up` makes the edge directory itself
