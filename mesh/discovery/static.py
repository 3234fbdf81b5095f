"""An in-memory registry: fixed instances for tests, tools and `MESH_REGISTRY=none`.

Nothing is health checked and nothing crosses a process boundary: what is
registered (or given to the constructor) is what `healthy()` returns, minus
instances a test marked unhealthy with `set_healthy()`. Watches see every change
made through this object at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from mesh.discovery.registry import Instance


class StaticRegistry:
    """Instances held in memory by this object."""

    def __init__(self, instances: Iterable[Instance] = ()) -> None:
        self._instances: dict[str, Instance] = {i.id: i for i in instances}
        self._unhealthy: set[str] = set()
        self._changed = asyncio.Event()
        self._closed = False

    def _notify(self) -> None:
        # Wake every current watcher; later waiters get a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    async def register(self, instance: Instance) -> None:
        self._instances[instance.id] = instance
        self._notify()

    async def deregister(self, instance_id: str) -> None:
        if self._instances.pop(instance_id, None) is not None:
            self._unhealthy.discard(instance_id)
            self._notify()

    async def set_healthy(self, instance_id: str, healthy: bool) -> None:
        """Take an instance out of (or back into) `healthy()`, as a failing check would."""
        before = set(self._unhealthy)
        if healthy:
            self._unhealthy.discard(instance_id)
        else:
            self._unhealthy.add(instance_id)
        if before != self._unhealthy:
            self._notify()

    def _healthy_now(self, service: str) -> list[Instance]:
        return sorted(
            (
                i
                for i in self._instances.values()
                if i.service == service and i.id not in self._unhealthy
            ),
            key=lambda i: i.id,
        )

    async def healthy(self, service: str) -> list[Instance]:
        return self._healthy_now(service)

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        last: list[tuple[Instance, list[tuple[str, str]]]] | None = None
        while not self._closed:
            changed = self._changed
            current = self._healthy_now(service)
            key = [(i, sorted(i.meta.items())) for i in current]
            if key != last:
                last = key
                yield current
            if self._closed:
                return
            await changed.wait()

    async def close(self) -> None:
        self._closed = True
        self._notify()


def parse_static_instances(spec: str) -> list[Instance]:
    """Instances from "service=host:port[,service=host:port...]" (e.g. an env variable).

    Ids are "<service>-<host>-<port>"; IPv6 hosts keep their brackets ("[::1]:50051")
    so that `Instance.address` stays a valid gRPC target.
    """
    instances: list[Instance] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        service, sep, target = item.partition("=")
        host, colon, port_text = target.strip().rpartition(":")
        if not sep or not colon or not service.strip() or not host:
            raise ValueError(f"{item!r}: expected service=host:port")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{item!r}: port {port_text!r} is not a number") from None
        if not 0 < port <= 65535:
            raise ValueError(f"{item!r}: port must be from 1 to 65535")
        service = service.strip()
        instances.append(Instance(f"{service}-{host}-{port}", service, host, port))
    return instances
