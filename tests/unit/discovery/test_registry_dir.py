"""The embedded registry trusts only a directory of this user's that nobody else can
write: anyone who can write it could register a rogue `payments`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mesh.discovery.embedded import EmbeddedRegistry, UnsafeRegistryDir, ensure_private_dir
from mesh.discovery.registry import Instance


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_missing_directory_is_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)  # a user-private-group umask would make it group writable
    try:
        ensure_private_dir(tmp_path / "a" / "registry")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a" / "registry") == 0o700


@pytest.mark.parametrize("bits", [0o770, 0o707, 0o777])
async def test_a_group_or_world_writable_directory_is_refused(tmp_path: Path, bits: int) -> None:
    directory = tmp_path / "registry"
    directory.mkdir()
    os.chmod(directory, bits)
    registry = EmbeddedRegistry(directory, health_check=False)
    try:
        with pytest.raises(UnsafeRegistryDir, match=r"writable.*chmod 700"):
            await registry.register(Instance("payments-rogue", "payments", "127.0.0.1", 1))
        with pytest.raises(UnsafeRegistryDir):
            await registry.healthy("payments")
        assert list(directory.iterdir()) == []  # nothing written
    finally:
        await registry.close()


async def test_a_private_directory_is_used(tmp_path: Path) -> None:
    directory = tmp_path / "registry"
    directory.mkdir(mode=0o755)  # readable by others is fine: they cannot write it
    registry = EmbeddedRegistry(directory, health_check=False)
    try:
        await registry.register(Instance("payments-1", "payments", "127.0.0.1", 1))
        assert [i.id for i in await registry.healthy("payments")] == ["payments-1"]
    finally:
        await registry.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_a_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "registry"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)  # nobody
    with pytest.raises(UnsafeRegistryDir, match="owned by uid 65534"):
        ensure_private_dir(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the link away")
def test_a_symlink_planted_by_someone_else_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir(mode=0o700)
    link = tmp_path / "registry"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)
    with pytest.raises(UnsafeRegistryDir, match=r"link .* owned by uid 65534"):
        ensure_private_dir(link)
