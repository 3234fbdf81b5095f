"""The small discovery contract every backend implements (after kratos' registry).

A backend registers this process's instances and lets clients watch a
service's healthy instances as a stream of snapshots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class RegistryUnavailable(ConnectionError):
    """The registry cannot be reached; callers keep their last known instances."""


@dataclass(frozen=True, slots=True)
class Instance:
    """One running instance of a service, as registered."""

    id: str
    service: str
    host: str
    port: int
    version: str = ""
    tags: tuple[str, ...] = ()
    # e.g. {"proto_packages": "shop.orders.v1,shop.orders.v2", "admin_port": "9102"}
    meta: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def address(self) -> str:
        """host:port, as a gRPC target."""
        return f"{self.host}:{self.port}"


@runtime_checkable
class Registry(Protocol):
    """Register instances and watch a service's healthy instances."""

    async def register(self, instance: Instance) -> None:
        """Make `instance` discoverable; it stays until deregistered or it dies."""

    async def deregister(self, instance_id: str) -> None:
        """Remove an instance; unknown ids are ignored."""

    async def healthy(self, service: str) -> list[Instance]:
        """The service's healthy instances now (raises RegistryUnavailable)."""

    def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        """Yield the healthy instances at once, then again whenever they change.

        The iterator keeps going across registry outages (it yields nothing new
        while the registry is unreachable) and ends when the registry is closed.
        """

    async def close(self) -> None:
        """Stop watches and background tasks (heartbeats, expiry)."""
