"""A service's events on NATS: the outbox relay and the durable subscribers.

State changes and their events commit together into the service's `mesh_outbox`
(`mesh.events.Outbox`); `EventPublisher` moves committed rows to JetStream.
`EventSubscriber` runs the service's durable consumers: every handler runs in a
transaction of the service's inbox (`mesh_inbox`), so a redelivered event has no
second effect, and the inbox forgets ids once no stream can deliver them again.
Any service on the mesh uses them, a project's own as well:

```python
access = bus_access(settings, EVENTS.domains, IDENTITIES)   # mesh.toml's event_identities
publisher = EventPublisher(settings.nats_url, sessions, outbox, name=settings.instance_id,
                           holder=settings.instance_id, access=access)
subscriber = EventSubscriber(settings.nats_url, sessions, "search",
                             [SubscriptionSpec("note.created", "search-note-created", on_note)],
                             name=settings.instance_id, access=access)
# ServiceDefinition(on_start=[publisher.start, subscriber.start],
#                   on_stop=[subscriber.stop, publisher.stop], checks=[publisher.check()])
```

Neither waits for NATS to start: each connects in the background and retries
until its streams are applied and its work runs. Meanwhile events wait in the
outbox or in the streams, and the optional `events` health check reports the
service degraded, never unhealthy. With an empty NATS_URL nothing is relayed or
consumed (tests, tools that only write).

Each connects as its service's NATS identity (`bus_access`: NATS_NKEY_SEED_FILE or
NATS_CREDS, which `meshctl up` gives each service its topology's `event_identities`
name; private inbox `_INBOX.<service>`) and declares only the streams the service
owns (its domain's, and DLQ when it consumes): the NATS permissions allow no other.
A consumer whose stream's owner has not started yet binds once it has.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from base.tasks import cancel_and_wait
from mesh.events.bus import EventBus
from mesh.events.consumer import SubscribeOptions
from mesh.events.inbox import Inbox, SessionHandler
from mesh.events.nats_auth import EventIdentity, owned_streams, stream_for
from mesh.events.nats_connect import NatsClientAuth, client_auth, redact_url
from mesh.events.outbox import Outbox
from mesh.events.relay import OutboxRelay, RelayConfig
from mesh.events.streams import DAY_S, StreamSpec, default_streams
from mesh.health import DependencyCheck, DependencyFailed
from mesh.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BusAccess:
    """How a service reaches the bus: its NATS credentials, the streams it may read
    from (`streams`) and those it declares at start (`declares`: the ones it owns).
    Made by `bus_access`; a test against its own NATS may give the streams directly."""

    auth: NatsClientAuth = field(default_factory=NatsClientAuth)
    streams: tuple[StreamSpec, ...] = ()
    declares: tuple[StreamSpec, ...] = ()


def bus_access(
    settings: Settings, domains: Sequence[str], identities: Sequence[EventIdentity]
) -> BusAccess:
    """The service's access from its settings: its identity's credentials, the streams of
    `domains` (the event types' domains) within the settings' limits, and only its own
    to declare. `identities` is the table the topology's `event_identities` names; a
    service it does not name declares every stream (a NATS without permissions, e.g.
    NATS_URL of one's own)."""
    streams = tuple(
        default_streams(
            domains,
            max_bytes=settings.stream_max_bytes,
            max_msgs=settings.stream_max_msgs,
            replicas=settings.stream_replicas,
        )
    )
    identity = next((i for i in identities if i.name == settings.service), None)
    declares = tuple(owned_streams(identity, streams)) if identity is not None else streams
    auth = client_auth(settings)
    auth.validate()  # a missing seed file stops the start instead of retrying forever
    return BusAccess(auth, streams, declares)


class BackgroundBus(abc.ABC):
    """An `EventBus` connected in the background, retried until `_on_connected` has set
    it up, closed by `stop()`; subclasses say what runs on it."""

    def __init__(
        self,
        nats_url: str,
        *,
        name: str,
        access: BusAccess,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.access = access
        self.name = name
        self._tracer_provider = tracer_provider
        self.bus: EventBus | None = None
        # Set once the bus is set up (relay running, consumers bound).
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.nats_url)

    async def start(self, settle_s: float = 0.0) -> None:
        """Begin connecting in the background; waits up to `settle_s` for it, never longer."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-events")
            if settle_s > 0:
                await asyncio.wait({self._task}, timeout=settle_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            await cancel_and_wait(task)
        await self._close()
        self.ready.clear()

    @abc.abstractmethod
    async def _on_connected(self, bus: EventBus) -> None:
        """Start the work on a connected bus whose streams are applied."""

    async def _on_close(self) -> None:
        """Stop what `_on_connected` started that closing the bus does not stop."""
        return  # nothing by default (consumers stop with the bus)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                # connect_nats retries the first connection itself, forever.
                bus = self.bus = await EventBus.connect(
                    self.nats_url,
                    name=self.name,
                    auth=self.access.auth,
                    streams=self.access.declares,
                    tracer_provider=self._tracer_provider,
                )
                await bus.ensure_streams()
                await self._on_connected(bus)
                self.ready.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # JetStream not ready yet: try again
                log.warning("%s: events not ready (%r); retrying in %.1fs", self.name, exc, delay)
                with contextlib.suppress(Exception):
                    await self._close()
                await asyncio.sleep(delay)  # backoff between attempts
                delay = min(delay * 2, 5.0)

    async def _close(self) -> None:
        await self._on_close()
        bus, self.bus = self.bus, None
        if bus is not None:
            await bus.close()  # stops the bus's consumers: unacked events come back later


class EventPublisher(BackgroundBus):
    """Connects to NATS (retrying forever), applies the streams, runs the outbox relay.

    `holder` is the relay's lease holder: the instance id, so that an instance
    restarted with the same id takes its publishing lease back at once instead of
    waiting for the dead process's lease to expire; None, a fresh one per process.
    """

    def __init__(
        self,
        nats_url: str,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        *,
        name: str,
        access: BusAccess,
        relay_config: RelayConfig | None = None,
        holder: str | None = None,
    ) -> None:
        super().__init__(nats_url, name=name, access=access)
        self._sessions = sessions
        self._outbox = outbox
        self._relay_config = relay_config
        self._holder = holder
        self.relay: OutboxRelay | None = None

    async def start(self, settle_s: float = 0.5) -> None:
        """As `BackgroundBus.start`, waiting a little by default: the first health report
        is right when NATS is up."""
        await super().start(settle_s)

    async def _on_connected(self, bus: EventBus) -> None:
        # Made here rather than by `bus.relay()`, which takes no holder.
        self.relay = OutboxRelay(
            self._sessions,
            bus.js,
            self._outbox,
            config=self._relay_config,
            holder=self._holder,
            nc=bus.nc,
        )
        self.relay.start()
        log.info("%s: relaying outbox events to %s", self.name, redact_url(self.nats_url))

    async def _on_close(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            await relay.stop()  # finishes its batch, releases the lease

    def check(self) -> DependencyCheck:
        """Optional health check: the relay is running on a connected bus."""

        async def probe() -> None:
            if not self.enabled:
                return
            if self.bus is None or self.relay is None or not self.bus.nc.is_connected:
                raise DependencyFailed(f"not connected to {redact_url(self.nats_url)}")

        return DependencyCheck("events", probe, required=False)


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """One durable consumer of a service: the subject it reads, its durable name (shared
    by every instance, so each event goes to one of them) and what an event does. The
    handler runs in the inbox's transaction, at most once per event id."""

    subject: str
    durable: str
    handler: SessionHandler


@dataclass(frozen=True, slots=True)
class InboxPurge:
    """When the subscriber forgets handled event ids: every `every_s`, those older than
    `older_than_s`. The default age outlives the streams' 7-day max age, so a
    redelivery never outlives its dedupe record."""

    every_s: float = 3600.0
    older_than_s: float = 8 * DAY_S


class EventSubscriber(BackgroundBus):
    """Subscribes the service's durable consumers once NATS is reachable (retrying
    forever) and purges their inbox periodically (with or without NATS)."""

    def __init__(
        self,
        nats_url: str,
        sessions: async_sessionmaker[AsyncSession],
        consumer: str,
        subscriptions: Sequence[SubscriptionSpec],
        *,
        name: str,
        access: BusAccess,
        tracer_provider: TracerProvider | None = None,
        options: SubscribeOptions | None = None,
        purge: InboxPurge | None = None,
    ) -> None:
        super().__init__(
            nats_url, name=f"{name}-sub", tracer_provider=tracer_provider, access=access
        )
        self.inbox = Inbox(sessions, consumer)
        self.subscriptions = tuple(subscriptions)
        self.options = options
        self.purge = purge or InboxPurge()
        self.purges = 0  # rounds run, for tests and debugging
        self._purger: asyncio.Task[None] | None = None

    async def start(self, settle_s: float = 0.0) -> None:
        """Begin subscribing in the background (by default never waits for NATS)."""
        if self._purger is None:
            self._purger = asyncio.create_task(self._purge_periodically(),
                                               name=f"{self.name}-inbox-purge")  # fmt: skip
        await super().start(settle_s)

    async def stop(self) -> None:
        """Stop consuming: the event in hand finishes, unacked ones are redelivered later."""
        purger, self._purger = self._purger, None
        await cancel_and_wait(purger)
        await super().stop()

    async def _on_connected(self, bus: EventBus) -> None:
        for s in self.subscriptions:
            # The stream named, not looked up: the identity may not list streams.
            stream = stream_for(s.subject, self.access.streams).name
            await bus.subscribe(s.subject, self.inbox.idempotent(s.handler), durable=s.durable,
                                stream=stream, options=self.options)  # fmt: skip
        log.info("%s: consuming %s", self.name, ", ".join(s.subject for s in self.subscriptions))

    async def _purge_periodically(self) -> None:
        # A first round at start: an instance restarted more often than `every_s`
        # still purges.
        while True:
            try:
                purged = await self.inbox.purge(self.purge.older_than_s)
                if purged:
                    log.info("%s: forgot %d handled event id(s)", self.name, purged)
            except Exception as exc:  # database busy or away: the next round catches up
                log.warning("%s: inbox purge failed: %r", self.name, exc)
            self.purges += 1
            await asyncio.sleep(self.purge.every_s)  # the purge period, not synchronisation
