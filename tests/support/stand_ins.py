"""Test doubles for the bootstrap tests: an in-memory registry and a stand-in runtime.

The registry follows mesh.discovery.registry.Registry; the runtime has just
the attributes `mesh.server.RuntimeLike` asks for, so these tests do not need
the client side of the mesh (MeshRuntime).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from interceptors.metrics import RpcMetrics
from mesh.discovery.registry import Instance, RegistryUnavailable


class MemoryRegistry:
    """Registry protocol in memory; `down` makes every call raise RegistryUnavailable."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.down = False
        self.changed = asyncio.Condition()

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailable("memory registry is down")

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def register(self, instance: Instance) -> None:
        self._check()
        self.instances[instance.id] = instance
        await self._notify()

    async def deregister(self, instance_id: str) -> None:
        self._check()
        self.instances.pop(instance_id, None)
        await self._notify()

    async def healthy(self, service: str) -> list[Instance]:
        self._check()
        return [i for i in self.instances.values() if i.service == service]

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        while True:
            yield [i for i in self.instances.values() if i.service == service]
            async with self.changed:
                await self.changed.wait()

    async def close(self) -> None:
        pass


@dataclass
class StandInRuntime:
    """Satisfies mesh.server.RuntimeLike: real RpcMetrics, spans kept in memory."""

    registry: MemoryRegistry | None = field(default_factory=MemoryRegistry)
    prometheus: CollectorRegistry = field(default_factory=CollectorRegistry)
    with_metrics: bool = True
    metrics: RpcMetrics | None = field(init=False, default=None)
    spans: InMemorySpanExporter = field(init=False, default_factory=InMemorySpanExporter)
    tracer_provider: TracerProvider = field(init=False, default_factory=TracerProvider)

    def __post_init__(self) -> None:
        if self.with_metrics:
            self.metrics = RpcMetrics(self.prometheus)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
