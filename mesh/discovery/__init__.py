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

    "consul" → ConsulRegistry on settings.consul_http_addr (ACL token: consul_token or
    the file consul_token_file);
    "embedded" → EmbeddedRegistry in settings.registry_dir; when empty, the
    running mesh's (recorded by `meshctl up`) or the per-user default
    (mesh.discovery.locate); "none" → a StaticRegistry holding `static_instances`.
    Backends are imported here so that a process only loads the one it uses.
    `identity` (mTLS on) is what the health checks of registered instances present.
    """
    if settings.registry == "consul":
        from mesh.discovery.consul import ConsulRegistry, read_token

        if not settings.consul_http_addr:
            raise ValueError("registry 'consul' needs consul_http_addr (CONSUL_HTTP_ADDR)")
        return ConsulRegistry(
            settings.consul_http_addr,
            read_token(settings.consul_token, settings.consul_token_file),
            ca_file=settings.consul_ca_file,
            client_cert=settings.consul_client_cert,
            client_key=settings.consul_client_key,
            identity=identity,
        )
    if settings.registry == "embedded":
        from mesh.discovery.embedded import EmbeddedRegistry
        from mesh.discovery.locate import RegistryLocation, locate

        location = (
            RegistryLocation(Path(settings.registry_dir), "MESH_REGISTRY_DIR")
            if settings.registry_dir
            else locate()
        )
        return EmbeddedRegistry(location.directory, where=location.describe(), identity=identity)
    if settings.registry == "none":
        from mesh.discovery.static import StaticRegistry

        return StaticRegistry(static_instances)
    raise ValueError(f"unknown registry kind {settings.registry!r}")
