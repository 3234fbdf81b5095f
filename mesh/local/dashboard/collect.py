"""One snapshot of the running mesh for the dashboard, gathered concurrently.

Sources, each what the component itself reports: the registry (instances),
each instance's admin port (`/health`, `/metrics`, `/sagas`), Envoy's admin
`/clusters` (which hosts the edge routes to or has ejected), JetStream's API
(streams and consumers), and the trace store. A source that does not answer
leaves its part empty with a note; the page never fails because one did.

Snapshots are cached for `min_interval_s` (a page load and the live refresh
share one), and the previous scrape of each instance is kept for rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from mesh.discovery.registry import Instance, Registry, RegistryUnavailable
from mesh.edge.admin import EnvoyAdmin, host_states
from mesh.events.nats_connect import NatsClientAuth
from mesh.local.dashboard.metrics import MethodStats, Scrape, method_stats, parse_scrape
from mesh.local.supervisor import ProcessView
from mesh.local.traces.store import TraceSummary, connect, recent_traces

# Probes, not traffic: left out of the per-method figures.
PROBE_SERVICES = ("grpc.health.v1.", "grpc.reflection.")

# What the supervisor started: instances that are down still show, and the mesh's own
# processes (the edge, nats-server, the trace sink) with their restarts.
Processes = Callable[[], Sequence[ProcessView]]


@dataclass
class InstanceView:
    service: str
    id: str
    address: str
    admin: str
    version: str = ""
    health: str = "unknown"
    failing: list[str] = field(default_factory=list)
    edge: str = ""  # the edge's view: routed, ejected, failing health checks, not routed
    ejections: float = 0.0  # times mesh clients ejected it (since they started)
    registered: bool = True


@dataclass
class StreamView:
    name: str
    messages: int
    consumers: list[dict[str, Any]]  # name, pending, ack_pending, redelivered


@dataclass
class SagaView:
    service: str
    admin: str  # the instance's admin base URL the retry goes to
    running: int
    compensating: int
    parked: list[dict[str, Any]]


@dataclass
class Snapshot:
    at: float
    instances: list[InstanceView]
    methods: list[MethodStats]
    breakers: list[tuple[str, str, str, str]]  # instance, target, method, state
    streams: list[StreamView]
    sagas: list[SagaView]
    traces: list[TraceSummary]
    notes: list[str]
    processes: list[ProcessView] = field(default_factory=list)  # the mesh's own


class Collector:
    def __init__(
        self,
        registry: Registry,
        services: Sequence[str],
        *,
        nats_url: str,
        edge_admin: EnvoyAdmin | None,
        traces_db: Path,
        processes: Processes | None = None,
        nats_auth: NatsClientAuth | None = None,
        min_interval_s: float = 1.0,
        timeout_s: float = 1.5,
    ) -> None:
        self.registry = registry
        self.services = tuple(services)
        self.nats_url = nats_url
        # How it asks JetStream for the streams' state: `meshctl up`'s own NATS admits
        # the dashboard as its read-only monitor identity only.
        self.nats_auth = nats_auth or NatsClientAuth()
        self.edge_admin = edge_admin
        self.traces_db = traces_db
        self.processes = processes
        self.min_interval_s = min_interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._nats: Any = None
        self._scrapes: dict[str, Scrape] = {}
        self._previous: dict[str, Scrape] = {}
        self._last: Snapshot | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await self._nats.close()

    def invalidate(self) -> None:
        """The next snapshot is gathered afresh (after an action changed something)."""
        self._last = None

    async def snapshot(self) -> Snapshot:
        async with self._lock:
            last = self._last
            if last is not None and time.monotonic() - last.at < self.min_interval_s:
                return last
            self._last = await self._collect()
            return self._last

    # -- sources -------------------------------------------------------------------------

    async def _get(self, url: str) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url) as r:
                if r.status >= 400 and r.status != 503:  # /health answers 503 when unhealthy
                    return None
                return await r.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _collect(self) -> Snapshot:
        notes: list[str] = []
        found = await asyncio.gather(
            *(self.registry.healthy(name) for name in self.services), return_exceptions=True
        )
        registered: dict[str, list[Instance]] = {}
        for name, result in zip(self.services, found, strict=True):
            if isinstance(result, RegistryUnavailable):
                notes.append(f"registry unreachable: {result}")
                result = []
            elif isinstance(result, BaseException):
                raise result
            registered[name] = result
        views = [v for name in self.services for v in self._views(name, registered[name])]
        # Every source at once: a page costs the slowest one, not their sum.
        edge, streams, traces, sagas, _ = await asyncio.gather(
            self._edge_hosts(notes),
            self._streams(notes),
            self._traces(notes),
            self._sagas(views),
            asyncio.gather(*(self._instance(v) for v in views if v.registered)),
        )
        for v in views:
            if v.registered:
                v.edge = edge.get(v.address, "not routed" if edge else "")
        procs = list(self.processes()) if self.processes is not None else []
        self._known_down(views, procs)
        methods: list[MethodStats] = []
        for name in self.services:
            pairs = [
                (self._scrapes[v.id], self._previous.get(v.id))
                for v in views
                if v.service == name and v.id in self._scrapes
            ]
            methods.extend(
                m
                for m in method_stats(name, pairs)
                if not m.grpc_service.startswith(PROBE_SERVICES)
            )
        ejected: dict[str, float] = {}
        breakers: list[tuple[str, str, str, str]] = []
        for v in views:
            scrape = self._scrapes.get(v.id)
            if scrape is None:
                continue
            for inst, times in scrape.ejections.items():
                ejected[inst] = ejected.get(inst, 0.0) + times
            breakers.extend((v.id, t, m, s) for t, m, s in scrape.breakers)
        for v in views:
            v.ejections = ejected.get(v.id, 0.0)
        own = [p for p in procs if not p.service]
        return Snapshot(
            time.monotonic(), views, methods, sorted(breakers), streams, sagas, traces, notes,
            own,
        )  # fmt: skip

    def _views(self, service: str, instances: list[Instance]) -> list[InstanceView]:
        return [
            InstanceView(
                service,
                i.id,
                i.address,
                f"http://{i.host}:{i.meta['admin_port']}" if i.meta.get("admin_port") else "",
                version=i.version,
            )
            for i in sorted(instances, key=lambda i: i.id)
        ]

    def _known_down(self, views: list[InstanceView], procs: Sequence[ProcessView]) -> None:
        """Instances the supervisor started that are not registered (down, restarting)."""
        if not procs:
            return
        present = {v.id for v in views}
        for p in procs:
            if p.service in self.services and p.name not in present:
                views.append(
                    InstanceView(
                        p.service,
                        p.name,
                        "-",
                        "",
                        health="starting" if p.running else "down",
                        registered=False,
                    )
                )
        views.sort(key=lambda v: (self.services.index(v.service), v.id))

    async def _instance(self, view: InstanceView) -> None:
        if not view.admin:
            return
        health, metrics = await asyncio.gather(
            self._get(f"{view.admin}/health"), self._get(f"{view.admin}/metrics")
        )
        if health is None:
            view.health = "unreachable"
        else:
            with contextlib.suppress(ValueError, AttributeError):
                doc = json.loads(health)
                view.health = str(doc.get("status", "unknown"))
                view.version = str(doc.get("version") or view.version)
                if doc.get("draining"):
                    view.health += " (draining)"
                view.failing = [
                    str(c.get("name")) for c in doc.get("checks", []) if c.get("status") != "ok"
                ]
        if metrics is not None:
            with contextlib.suppress(ValueError, KeyError):
                scrape = parse_scrape(metrics, time.monotonic())
                if view.id in self._scrapes:
                    self._previous[view.id] = self._scrapes[view.id]
                self._scrapes[view.id] = scrape

    async def _edge_hosts(self, notes: list[str]) -> dict[str, str]:
        """address -> the edge's view of it, from Envoy's admin `/clusters`."""
        if self.edge_admin is None:
            return {}
        try:
            doc = await self.edge_admin.clusters()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            notes.append("edge admin did not answer")
            return {}
        return {addr: state for hosts in host_states(doc).values() for addr, state in hosts.items()}

    async def _streams(self, notes: list[str]) -> list[StreamView]:
        from nats.errors import Error as NatsError

        try:
            if self._nats is None or not self._nats.is_connected:
                if self._nats is not None:
                    with contextlib.suppress(Exception):
                        await self._nats.close()
                self._nats = None
                self._nats = await asyncio.wait_for(self._connect_nats(), 3)
            js = self._nats.jetstream(timeout=1.5)
            streams = await js.streams_info()
            per_stream = await asyncio.gather(
                *(js.consumers_info(info.config.name) for info in streams)
            )
            out = []
            for info, consumers in zip(streams, per_stream, strict=True):
                rows = [
                    {
                        "name": c.name,
                        "pending": c.num_pending or 0,
                        "ack_pending": c.num_ack_pending or 0,
                        "redelivered": c.num_redelivered or 0,
                    }
                    for c in consumers
                ]
                out.append(StreamView(info.config.name, info.state.messages, rows))
            return sorted(out, key=lambda s: s.name)
        except (NatsError, OSError, TimeoutError) as exc:
            # Host and port only: a URL may carry credentials.
            where = f"nats://{urlsplit(self.nats_url).hostname}:{urlsplit(self.nats_url).port}"
            notes.append(f"NATS at {where}: {exc.__class__.__name__} {exc}".strip())
            self._nats = None
            return []

    async def _connect_nats(self) -> Any:
        """One connection, no reconnects (the next refresh connects again). nats-py retries
        an unreachable server's first connect forever: the caller bounds it."""
        import nats

        # A refused port fails here at once instead of after the caller's bound.
        url = urlsplit(self.nats_url)
        _, writer = await asyncio.open_connection(url.hostname or "127.0.0.1", url.port or 4222)
        writer.close()

        async def quiet(_exc: Exception) -> None:  # the note on the page says it
            return None

        return await nats.connect(
            self.nats_url,
            name="meshctl-dashboard",
            connect_timeout=1,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
            **self.nats_auth.connect_options(),
        )

    async def _sagas(self, views: list[InstanceView]) -> list[SagaView]:
        """Per service, from its first registered instance (one database per service);
        a service without `/sagas` (404) has no sagas."""
        first: dict[str, InstanceView] = {}
        for v in views:
            if v.admin and v.registered:
                first.setdefault(v.service, v)
        found = await asyncio.gather(*(self._saga_view(v) for v in first.values()))
        return [s for s in found if s is not None]

    async def _saga_view(self, v: InstanceView) -> SagaView | None:
        text = await self._get(f"{v.admin}/sagas")
        if text is None:
            return None
        try:
            doc = json.loads(text)
            return SagaView(
                v.service,
                v.admin,
                int(doc["running"]),
                int(doc["compensating"]),
                list(doc["parked"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    async def _traces(self, notes: list[str]) -> list[TraceSummary]:
        if not self.traces_db.exists():
            return []

        def read() -> list[TraceSummary]:
            conn = connect(self.traces_db, readonly=True)
            try:
                return recent_traces(conn, 30)
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(read)
        except sqlite3.Error as exc:
            notes.append(f"trace store: {exc}")
            return []
