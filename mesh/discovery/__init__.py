"""Service discovery: the Registry protocol and its backends (consul, embedded)."""

from mesh.discovery.registry import Instance, Registry, RegistryUnavailable

__all__ = ["Instance", "Registry", "RegistryUnavailable"]
