"""A service's outbox relay, run in the background once NATS is reachable.

State changes and their events commit together into the service's `mesh_outbox`
(`mesh.events.Outbox`); this publisher moves committed rows to JetStream. The
service does not wait for NATS to start: until the connection is up the events
stay in the outbox and the optional `events` health check reports the service
degraded, never unhealthy. With an empty NATS_URL nothing is relayed (tests,
tools that only write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.events import EventBus, Outbox, OutboxRelay, RelayConfig
from mesh.health import DependencyCheck, DependencyFailed

log = logging.getLogger(__name__)


class EventPublisher:
    """Connects to NATS (retrying forever), applies the streams, runs the outbox relay."""

    def __init__(
        self,
        nats_url: str,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        *,
        name: str,
        relay_config: RelayConfig | None = None,
    ) -> None:
        self.nats_url = nats_url
        self._sessions = sessions
        self._outbox = outbox
        self._name = name
        self._relay_config = relay_config
        self._task: asyncio.Task[None] | None = None
        self.bus: EventBus | None = None
        self.relay: OutboxRelay | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.nats_url)

    async def start(self, settle_s: float = 0.5) -> None:
        """Begin connecting in the background; waits up to `settle_s` for the connection,
        so the first health report is right when NATS is up, and never longer."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-events")
            await asyncio.wait({self._task}, timeout=settle_s)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                # connect_nats retries the first connection itself, forever.
                bus = await EventBus.connect(self.nats_url, name=self._name)
                self.bus = bus
                await bus.ensure_streams()
                self.relay = bus.relay(self._sessions, self._outbox, config=self._relay_config)
                self.relay.start()
                log.info("%s: relaying outbox events to %s", self._name, self.nats_url)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # streams not appliable yet (JetStream starting)
                log.warning("%s: events not ready (%r); retrying in %.1fs", self._name, exc, delay)
                if self.bus is not None:
                    with contextlib.suppress(Exception):
                        await self.bus.close()
                    self.bus = None
                await asyncio.sleep(delay)  # backoff between attempts
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        bus, self.bus = self.bus, None
        if bus is not None:
            await bus.close()  # stops the relay: finishes its batch, releases the lease

    def check(self) -> DependencyCheck:
        """Optional health check: the relay is running on a connected bus."""

        async def probe() -> None:
            if not self.enabled:
                return
            if self.bus is None or self.relay is None or not self.bus.nc.is_connected:
                raise DependencyFailed(f"not connected to {self.nats_url}")

        return DependencyCheck("events", probe, required=False)
