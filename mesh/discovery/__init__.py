"""Service discovery: the Registry protocol and its backends (consul, embedded, static)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.discovery.health_probe import ClientIdentity
from mesh.discovery.registry import Instance, Registry, RegistryUnavailable
from mesh.settings import Settings

__all__ = ["Instance", "Registry", "RegistryUnavailable", "create_registry"]


def create_registry(
    settings: Settings,
    *,
    static_instances: Sequence[Instance] = (),
    identity: ClientIdentity | None = None,
) -> Registry:
    """The registry `settings.registry` names.

    "consul" → ConsulRegistry on settings.consul_http_addr (token consul_token);
    "embedded" → EmbeddedRegistry in settings.registry_dir (the per-user default
    when empty); "none" → a StaticRegistry holding `static_instances`.
    Backends are imported here so that a process only loads the one it uses.
    `identity` (mTLS on) is what the health checks of registered instances present.
    """
    if settings.registry == "consul":
        from mesh.discovery.consul import ConsulRegistry

        if not settings.consul_http_addr:
            raise ValueError("registry 'consul' needs consul_http_addr (CONSUL_HTTP_ADDR)")
        return ConsulRegistry(settings.consul_http_addr, settings.consul_token, identity=identity)
    if settings.registry == "embedded":
        from mesh.discovery.embedded import EmbeddedRegistry, default_registry_dir

        directory = Path(settings.registry_dir) if settings.registry_dir else default_registry_dir()
        return EmbeddedRegistry(directory, identity=identity)
    if settings.registry == "none":
        from mesh.discovery.static import StaticRegistry

        return StaticRegistry(static_instances)
    raise ValueError(f"unknown registry kind {settings.registry!r}")
