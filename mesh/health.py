"""Health that follows a service's dependencies.

A service declares `DependencyCheck`s: a probe (an async callable that raises
when the dependency is unusable) and whether the service can work without it.
`HealthMonitor` probes them all periodically, each under a timeout, and folds
the results into one report:

- healthy: every check passes;
- degraded: an optional check fails (an upstream service, NATS): the service
  still answers, so gRPC health stays SERVING and it stays in discovery;
- unhealthy: a required check fails (its database), or the instance is
  draining: gRPC health NOT_SERVING, so registry health checks drop it.

Ready-made probes: `database_check`, `nats_check`, `grpc_upstream_check`,
`registry_upstream_check`. `DrainingHealthServicer` is the grpc.health.v1
servicer whose Watch streams end on shutdown, so they do not hold a drain open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from base.tasks import cancel_and_wait
from mesh.discovery.registry import Registry

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
CheckStatus = Literal["ok", "failing", "unknown"]
HealthStatus = Literal["healthy", "degraded", "unhealthy"]


class DependencyFailed(RuntimeError):
    """Raised by a probe whose dependency answers but is not usable."""


@dataclass(frozen=True, slots=True)
class DependencyCheck:
    """A dependency of the service: `probe` raises when it is unusable."""

    name: str
    probe: Probe
    required: bool = True


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The last outcome of one check."""

    name: str
    required: bool
    status: CheckStatus = "unknown"
    error: str | None = None
    latency_ms: float | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "required": self.required,
            "status": self.status,
            "error": self.error,
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The service's health now: overall status and every check's last result."""

    status: HealthStatus
    checks: tuple[CheckResult, ...] = ()
    draining: bool = False

    @property
    def serving(self) -> bool:
        """What grpc.health.v1 reports: only unhealthy means NOT_SERVING."""
        return self.status != "unhealthy"


def summarise(results: Sequence[CheckResult], *, draining: bool = False) -> HealthReport:
    """Fold check results into a report (an unprobed required check counts as failing)."""
    if draining or any(r.required and r.status != "ok" for r in results):
        status: HealthStatus = "unhealthy"
    elif any(r.status != "ok" for r in results):
        status = "degraded"
    else:
        status = "healthy"
    return HealthReport(status, tuple(results), draining)


OnChange = Callable[[HealthReport], Awaitable[None]]


class HealthMonitor:
    """Probes the checks every `interval_s` (each bounded by `timeout_s`).

    `on_change` is awaited whenever the overall status changes (and once on the
    first refresh), which is where gRPC health gets updated.
    """

    # An optional dependency that has not been up since this monitor started (start-up
    # order under `meshctl up`, a rollout starting callers first) is said once at INFO,
    # and as a warning only if it still fails this long after the start: a newcomer's
    # first screen should not be warnings about services that are seconds from ready.
    STARTUP_PATIENCE_S = 10.0
    # Meanwhile such a dependency is probed this often instead of every `interval_s`:
    # under `meshctl up` its callers start beside it, and a `meshctl status` right after
    # "mesh is up" showed them degraded for up to `interval_s` after it was up.
    STARTUP_RETRY_S = 0.5

    def __init__(
        self,
        checks: Sequence[DependencyCheck],
        *,
        interval_s: float = 5.0,
        timeout_s: float = 2.0,
        on_change: OnChange | None = None,
        timeouts_to_fail: int = 1,
    ) -> None:
        if not interval_s > 0 or not timeout_s > 0:
            raise ValueError("health interval and timeout must be positive")
        if timeouts_to_fail < 1:
            raise ValueError("timeouts_to_fail must be at least 1")
        names = [c.name for c in checks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate dependency check names: {names}")
        self.checks = tuple(checks)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.on_change = on_change
        # A check that was ok and now only timed out counts as failing after this many
        # timeouts in a row: under load a dependency answers late, and an instance
        # reported unhealthy for that (with its peer restarting) left a service with no
        # instance at all. A probe that raises fails at once.
        self.timeouts_to_fail = timeouts_to_fail
        self._timeouts = {c.name: 0 for c in self.checks}
        self._results = {c.name: CheckResult(c.name, c.required) for c in self.checks}
        self._report = summarise(list(self._results.values()))
        self._published: HealthStatus | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._born = time.monotonic()
        self._awaited: set[str] = set()  # optional checks said at INFO, not up yet

    @property
    def report(self) -> HealthReport:
        return self._report

    async def refresh(self) -> HealthReport:
        """Probe every check now (concurrently) and publish the new report."""
        async with self._lock:
            if self._report.draining:
                return self._report
            results = [
                self._debounced(r) for r in await asyncio.gather(*map(self._probe, self.checks))
            ]
            for r in results:
                self._log_transition(self._results[r.name], r)
                self._results[r.name] = r
            self._report = summarise(results)
            await self._publish()
            return self._report

    async def drain(self) -> None:
        """Stop probing and report unhealthy from now on (shutdown has begun)."""
        await self.stop()
        async with self._lock:
            self._report = summarise(list(self._results.values()), draining=True)
            await self._publish()

    def start(self) -> None:
        """Probe periodically in the background until `stop()`/`drain()`."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            # Waiting on the event (not a bare sleep) lets stop() end the loop at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._next_wait())
                return
            try:
                await self.refresh()
            except Exception:  # an on_change failure must not end health probing
                log.exception("health refresh failed")

    def _next_wait(self) -> float:
        """`interval_s`, or `STARTUP_RETRY_S` while a dependency is awaited (not up since
        the start, within `STARTUP_PATIENCE_S`)."""
        if self._awaited:
            return min(self.interval_s, self.STARTUP_RETRY_S)
        return self.interval_s

    async def _probe(self, check: DependencyCheck) -> CheckResult:
        started = time.perf_counter()
        error: str | None = None
        try:
            await asyncio.wait_for(check.probe(), self.timeout_s)
        except TimeoutError:
            error = f"timed out after {self.timeout_s:g}s"
        except Exception as exc:  # a probe reports failure by raising anything
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency = round((time.perf_counter() - started) * 1000, 3)
        return CheckResult(check.name, check.required, "failing" if error else "ok", error, latency)

    def _debounced(self, result: CheckResult) -> CheckResult:
        """A lone timeout of a check that was ok keeps it ok (see `timeouts_to_fail`); one
        never seen ok (at start-up) fails on its first timeout."""
        timed_out = result.status == "failing" and (result.error or "").startswith("timed out")
        self._timeouts[result.name] = self._timeouts[result.name] + 1 if timed_out else 0
        was_ok = self._results[result.name].status == "ok"
        if timed_out and was_ok and self._timeouts[result.name] < self.timeouts_to_fail:
            previous = self._results[result.name]
            return replace(result, status=previous.status, error=previous.error)
        return result

    async def _publish(self) -> None:
        if self._report.status == self._published:
            return
        previous, self._published = self._published, self._report.status
        if self._report.draining:
            log.info("health %s -> %s (draining)", previous, self._report.status)
        elif previous is not None:
            level = logging.INFO if self._report.status == "healthy" else logging.WARNING
            log.log(level, "health %s -> %s", previous, self._report.status)
        if self.on_change is not None:
            await self.on_change(self._report)

    def _log_transition(self, before: CheckResult, after: CheckResult) -> None:
        """A check's change of status, said once. A required check failing, or an optional
        one that was up before, is a warning at once; an optional one not up yet since the
        start is INFO, then a warning if it still fails after `STARTUP_PATIENCE_S`."""
        name, kind = after.name, "required" if after.required else "optional"
        if name in self._awaited:
            if after.status == "ok":
                self._awaited.discard(name)
                log.info("%s dependency %s is up", kind, name)
            elif time.monotonic() - self._born >= self.STARTUP_PATIENCE_S:
                self._awaited.discard(name)
                log.warning("%s dependency %s failing, %gs after start: %s",
                            kind, name, self.STARTUP_PATIENCE_S, after.error)  # fmt: skip
            return
        if before.status == after.status:
            return
        if after.status == "failing":
            if (
                not after.required
                and before.status == "unknown"  # its first probe: never up since the start
                and time.monotonic() - self._born < self.STARTUP_PATIENCE_S
            ):
                self._awaited.add(name)
                log.info("%s dependency %s not up yet (%s); waiting for it",
                         kind, name, after.error)  # fmt: skip
                return
            log.warning("%s dependency %s failing: %s", kind, name, after.error)
        elif before.status == "failing":
            log.info("%s dependency %s recovered", kind, name)


# grpc.health.v1 ServingStatus values (grpc_health ships no type stubs).
ServingStatus = int


class DrainingHealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 (Check and Watch) whose Watch streams end once shutdown begins.

    An open Watch is an in-flight RPC: left open it would keep the server's
    graceful stop waiting for the whole grace period. After
    `enter_graceful_shutdown()` every status is NOT_SERVING, each stream is
    sent that and then ends. (grpcio-health-checking's servicer keeps them
    open, and forgets other watchers of a service when one of them leaves.)
    """

    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Condition()
        self._closing = False

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set a service's status (ignored once shutting down)."""
        if self._closing:
            return
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; Watch streams end."""
        async with self._changed:
            self._closing = True
            for service in self._status:
                self._status[service] = health_pb2.HealthCheckResponse.NOT_SERVING
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # type: ignore[override]
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> None:
        last: ServingStatus | None = None
        async with self._changed:
            while True:
                status = self._status.get(
                    request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                if self._closing:
                    return
                await self._changed.wait()


# --- ready-made probes ---------------------------------------------------------


class _Engine(Protocol):
    """The part of SQLAlchemy's AsyncEngine a probe needs."""

    def connect(self) -> Any: ...


def database_check(
    engine: _Engine, *, name: str = "database", required: bool = True
) -> DependencyCheck:
    """`SELECT 1` against the service's database, on a connection of its own.

    Not from the service's pool: under load every pooled connection can be held by
    requests waiting on a lock, and a probe queued behind them timed out and reported
    a live database as dead (the instance went unhealthy mid-traffic). A SQLAlchemy
    `AsyncEngine` gets a sibling engine for the same URL without pooling (one short
    connection per probe — for PostgreSQL also a real connect test); anything else
    with `connect()` is probed as given.
    """
    from sqlalchemy import text  # only services with a database pay for the import

    url = getattr(engine, "url", None)
    if url is not None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        engine = create_async_engine(url, poolclass=NullPool)

    async def probe() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return DependencyCheck(name, probe, required)


class _NatsLike(Protocol):
    @property
    def is_connected(self) -> bool: ...


def nats_check(nc: _NatsLike, *, name: str = "nats", required: bool = False) -> DependencyCheck:
    """The NATS client is connected (optional by default: the outbox holds events meanwhile)."""

    async def probe() -> None:
        if not nc.is_connected:
            raise DependencyFailed("not connected")

    return DependencyCheck(name, probe, required)


def grpc_upstream_check(
    name: str,
    channel: grpc.aio.Channel,
    *,
    service: str = "",
    required: bool = False,
    timeout_s: float = 1.0,
) -> DependencyCheck:
    """grpc.health.v1 Check of `service` over `channel` (owned by the caller) is SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def probe() -> None:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise DependencyFailed(f"{service or 'server'} is {status}")

    return DependencyCheck(name, probe, required)


def registry_upstream_check(
    registry: Registry, service: str, *, name: str | None = None, required: bool = False
) -> DependencyCheck:
    """The registry knows at least one healthy instance of `service`."""

    async def probe() -> None:
        if not await registry.healthy(service):
            raise DependencyFailed(f"no healthy instance of {service}")

    return DependencyCheck(name or service, probe, required)
