"""The policy store that goes with a registry: the same backend, found the same way.

An embedded registry keeps policies in files beside its instances
(`<registry dir>/traffic/<service>.json`); Consul in its KV
(`shop-mesh/traffic/<service>`), with the registry's address, token and TLS. A
static registry (`MESH_REGISTRY=none`) has no policies: one pool per service.
Backends are imported here so that a process only loads the one it uses.
"""

from __future__ import annotations

from typing import Any

from mesh.traffic.policy import PolicyStore


def policy_store_for(registry: Any) -> PolicyStore | None:
    """The store beside `registry` (None when that kind of registry has none)."""
    from mesh.discovery.embedded import EmbeddedRegistry

    if isinstance(registry, EmbeddedRegistry):
        from mesh.traffic.file_store import FilePolicyStore

        return FilePolicyStore(registry.directory)
    if type(registry).__name__ == "ConsulRegistry":  # no consul import for other backends
        from mesh.traffic.consul_store import ConsulPolicyStore

        return ConsulPolicyStore.like(registry)
    return None
