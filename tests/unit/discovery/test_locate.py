"""mesh.discovery.locate: the per-user record of the running mesh's registry."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from mesh.discovery import locate


def env_in(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_RUNTIME_DIR": str(tmp_path / "rt")}


def test_nothing_recorded_falls_back_to_the_per_user_default_and_says_where_it_looked(
    tmp_path: Path,
) -> None:
    env = env_in(tmp_path)
    found = locate.locate(env)
    assert found.directory == tmp_path / "rt" / f"shop-mesh-{os.getuid()}"
    assert str(tmp_path / "state" / "shop-mesh" / "current.json") in found.describe()
    assert "no `meshctl up` recorded" in found.how


def test_a_recorded_live_mesh_is_found_and_forgotten_when_it_stops(tmp_path: Path) -> None:
    env = env_in(tmp_path)
    registry = tmp_path / "run" / "registry"
    registry.mkdir(parents=True)
    path = locate.record(registry, env=env)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    found = locate.locate(env)
    assert found.directory == registry.resolve()
    assert f"pid {os.getpid()}" in found.how

    locate.forget(tmp_path / "other", env=env)  # another mesh's stop leaves ours alone
    assert locate.locate(env).directory == registry.resolve()
    locate.forget(registry, env=env)
    assert not path.exists()
    assert locate.locate(env).directory.name == f"shop-mesh-{os.getuid()}"


def test_a_record_of_a_dead_meshctl_is_ignored(tmp_path: Path) -> None:
    env = env_in(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    locate.record(tmp_path / "registry", pid=int(dead.stdout), env=env)
    found = locate.locate(env)
    assert found.directory.name == f"shop-mesh-{os.getuid()}"
    assert f"(pid {int(dead.stdout)}) is gone" in found.how


def test_an_unreadable_record_is_reported(tmp_path: Path) -> None:
    env = env_in(tmp_path)
    path = locate.record_file(env)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    found = locate.locate(env)
    assert found.directory.name == f"shop-mesh-{os.getuid()}"
    assert "unreadable" in found.how
