"""The admin HTTP port of a service (aiohttp): `/health` JSON and `/metrics`.

`/health` answers the dependency report: HTTP 200 when healthy or degraded,
503 when unhealthy (a required dependency fails, or the instance is draining),
so plain HTTP health checkers agree with grpc.health.v1. `/metrics` is the
Prometheus text exposition of the runtime's registry, plus the process and
platform collectors unless that registry already has them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from mesh.health import HealthReport

log = logging.getLogger(__name__)


class AdminBindError(OSError):
    """The admin port could not be bound."""


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """Who answers: shown in `/health`."""

    service: str
    instance: str
    version: str


def health_body(report: HealthReport, identity: AdminIdentity) -> dict[str, object]:
    """The `/health` JSON document."""
    body: dict[str, object] = {
        "status": report.status,
        "service": identity.service,
        "instance": identity.instance,
        "version": identity.version,
        "checks": [c.as_json() for c in report.checks],
    }
    if report.draining:
        body["draining"] = True
    return body


def _runtime_collectors(registry: CollectorRegistry) -> CollectorRegistry:
    """A private registry with the process/platform/gc collectors `registry` lacks.

    Kept apart so one runtime shared by several services in a process (tests)
    never registers the same collector twice.
    """
    present = {m.name for m in registry.collect()}
    extra = CollectorRegistry(auto_describe=True)
    if not any(n.startswith("process_") for n in present):
        ProcessCollector(registry=extra)
    if "python_info" not in present:
        PlatformCollector(registry=extra)
    if not any(n.startswith("python_gc_") for n in present):
        GCCollector(registry=extra)
    return extra


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """An extra endpoint a service puts on its admin port (e.g. `mesh.saga.admin`)."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminServer:
    """`/health` and `/metrics` on their own HTTP port."""

    def __init__(
        self,
        *,
        report: Callable[[], HealthReport],
        prometheus: CollectorRegistry,
        identity: AdminIdentity,
        routes: Sequence[AdminRoute] = (),
    ) -> None:
        self._routes = tuple(routes)
        self._report = report
        self._prometheus = prometheus
        self._extra = _runtime_collectors(prometheus)
        self._identity = identity
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        for route in self._routes:
            app.router.add_route(route.method, route.path, route.handler)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = a free port); returns the bound port."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise AdminBindError(
                exc.errno, f"cannot bind admin port {host}:{port} (MESH_ADMIN_PORT): {exc}"
            ) from exc
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _health(self, _request: web.Request) -> web.Response:
        report = self._report()
        return web.json_response(
            health_body(report, self._identity), status=200 if report.serving else 503
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._prometheus) + generate_latest(self._extra)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
