"""Registry backends under test (embedded, the Consul test agent, a real Consul), watch
recorders and a process that registers itself; the fixtures that build them are in
tests/integration/discovery/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from mesh.discovery.registry import Instance, Registry
from tests.support.consul_agent import ConsulTestAgent
from tests.support.health_server import HealthServer
from tests.support.ready_child import ready_child

HEALTH_SERVICE = "shop.disc.v1.Disc"


REAL_CONSUL = os.environ.get("CONSUL_HTTP_ADDR", "")


@dataclass
class Backend:
    name: str
    factory: Callable[[], Registry]
    process_args: list[str]  # where `python -m tests.support.health_server` registers
    registered_ids: Callable[[str], Awaitable[set[str]]]  # healthy or not
    outage_prefix: str  # how the read path's outage log line starts
    check_latency_s: float  # NOT_SERVING → out of healthy()
    expiry_s: float  # a killed process → out of healthy()
    reap_s: float | None  # a killed process → no longer registered (None: not in test time)
    break_registry: Callable[[], Awaitable[None]] | None = None
    repair_registry: Callable[[], Awaitable[None]] | None = None
    agent: ConsulTestAgent | None = None
    token: str = ""
    made: list[Registry] = field(default_factory=list)
    services: list[str] = field(default_factory=list)

    def make(self) -> Registry:
        """A new registry object, as another process would have."""
        registry = self.factory()
        self.made.append(registry)
        return registry

    def service(self) -> str:
        name = f"disc-{uuid.uuid4().hex[:8]}"
        self.services.append(name)
        return name


def instance_for(server: HealthServer, service: str, n: int = 1) -> Instance:
    return Instance(
        id=f"{service}-{n}",
        service=service,
        host="127.0.0.1",
        port=server.port,
        version="0.1.0",
        tags=("blue",),
        meta={
            "health_service": HEALTH_SERVICE,
            "proto_packages": "shop.disc.v1,shop.disc.v2",
            "admin_port": "9100",
        },
    )


class WatchRecorder:
    """Consumes a watch in the background; tests wait for a snapshot with a deadline."""

    def __init__(self, stream: AsyncIterator[list[Instance]]) -> None:
        self.snapshots: list[tuple[float, list[Instance]]] = []
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: AsyncIterator[list[Instance]]) -> None:
        try:
            async for snapshot in stream:
                self.snapshots.append((time.monotonic(), snapshot))
                self._changed.set()
                self._changed = asyncio.Event()
        finally:
            self.ended.set()

    def ids(self) -> set[str] | None:
        return {i.id for i in self.snapshots[-1][1]} if self.snapshots else None

    async def wait_ids(self, expected: set[str], within_s: float) -> list[Instance]:
        """The first snapshot with exactly `expected` ids, within `within_s`."""
        deadline = time.monotonic() + within_s
        while self.ids() != expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                history = [sorted(i.id for i in s) for _, s in self.snapshots]
                raise AssertionError(
                    f"watch never showed {sorted(expected)} in {within_s}s: {history}"
                )
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return self.snapshots[-1][1]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def registering_process(
    backend: Backend, service: str, instance_id: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another OS process serving gRPC health and registered in `backend`."""
    args = ("--service", service, "--id", instance_id, *backend.process_args)
    async with ready_child("tests.support.health_server", *args, timeout_s=20) as (proc, _):
        yield proc
