"""create_registry picks the backend the settings name."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.discovery import Instance, Registry, create_registry
from mesh.discovery.consul import ConsulRegistry
from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.static import StaticRegistry
from mesh.settings import Settings


async def test_embedded_consul_and_none(tmp_path: Path) -> None:
    embedded = create_registry(
        Settings(service="s", registry="embedded", registry_dir=str(tmp_path))
    )
    assert isinstance(embedded, EmbeddedRegistry) and embedded.directory == tmp_path

    consul = create_registry(
        Settings.from_env("s", {"CONSUL_HTTP_ADDR": "10.1.2.3:8500", "CONSUL_HTTP_TOKEN": "t"})
    )
    assert isinstance(consul, ConsulRegistry) and consul.address == "10.1.2.3:8500"

    fixed = Instance("a-1", "a", "127.0.0.1", 1)
    static = create_registry(Settings(service="s", registry="none"), static_instances=[fixed])
    assert isinstance(static, StaticRegistry) and await static.healthy("a") == [fixed]

    for registry in (embedded, consul, static):
        assert isinstance(registry, Registry)
        await registry.close()


def test_embedded_without_a_directory_uses_the_per_user_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # no mesh recorded there
    registry = create_registry(Settings(service="s", registry="embedded"))
    assert isinstance(registry, EmbeddedRegistry)
    assert registry.directory.name.startswith("shop-mesh-")
    assert str(tmp_path / "state" / "shop-mesh" / "current.json") in registry.where


def test_consul_without_an_address_is_refused() -> None:
    with pytest.raises(ValueError, match="CONSUL_HTTP_ADDR"):
        create_registry(Settings(service="s", registry="consul"))
