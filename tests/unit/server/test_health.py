"""HealthMonitor and the ready-made probes, without servers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mesh.admin import AdminIdentity, health_body
from mesh.db import create_engine
from mesh.discovery.registry import Instance
from mesh.health import (
    CheckResult,
    DependencyCheck,
    DependencyFailed,
    HealthMonitor,
    HealthReport,
    database_check,
    nats_check,
    registry_upstream_check,
    summarise,
)
from mesh.server import proto_packages
from tests.support.stand_ins import MemoryRegistry


def ok(name: str, required: bool) -> CheckResult:
    return CheckResult(name, required, "ok", None, 1.0)


def failing(name: str, required: bool) -> CheckResult:
    return CheckResult(name, required, "failing", "down", 1.0)


@pytest.mark.parametrize(
    ("results", "draining", "expected"),
    [
        ([], False, "healthy"),
        ([ok("db", True), ok("nats", False)], False, "healthy"),
        ([ok("db", True), failing("nats", False)], False, "degraded"),
        ([failing("db", True), ok("nats", False)], False, "unhealthy"),
        ([CheckResult("db", True)], False, "unhealthy"),  # never probed
        ([CheckResult("nats", False)], False, "degraded"),
        ([ok("db", True)], True, "unhealthy"),
    ],
)
def test_summarise(results: list[CheckResult], draining: bool, expected: str) -> None:
    report = summarise(results, draining=draining)
    assert report.status == expected
    assert report.serving is (expected != "unhealthy")


class Flaky:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


async def test_on_change_fires_once_per_status_change() -> None:
    probe = Flaky()
    seen: list[str] = []

    async def on_change(report: HealthReport) -> None:
        seen.append(report.status)

    monitor = HealthMonitor([DependencyCheck("db", probe, True)], on_change=on_change)
    assert monitor.report.status == "unhealthy"  # not probed yet
    await monitor.refresh()
    await monitor.refresh()
    probe.error = ConnectionRefusedError("connection refused")
    report = await monitor.refresh()
    await monitor.refresh()
    assert seen == ["healthy", "unhealthy"]
    assert report.checks[0].error == "ConnectionRefusedError: connection refused"
    assert probe.calls == 4


async def test_error_without_message_is_named() -> None:
    probe = Flaky()
    probe.error = DependencyFailed()
    report = await HealthMonitor([DependencyCheck("x", probe, False)]).refresh()
    assert report.checks[0].error == "DependencyFailed"


async def test_probes_run_concurrently_each_under_the_timeout() -> None:
    met = asyncio.Event()
    running = 0

    async def meet() -> None:
        """Succeeds only when the other `meet` probe runs at the same time."""
        nonlocal running
        running += 1
        if running == 2:
            met.set()
        await met.wait()

    async def hang() -> None:
        await asyncio.Event().wait()

    monitor = HealthMonitor(
        [
            DependencyCheck("a", meet, False),
            DependencyCheck("b", meet, False),
            DependencyCheck("c", hang, False),
        ],
        timeout_s=0.2,
    )
    report = await monitor.refresh()
    # Run one after the other, "a" would time out waiting for "b".
    assert [c.error for c in report.checks] == [None, None, "timed out after 0.2s"]
    assert report.status == "degraded"


async def test_periodic_probing_and_prompt_stop() -> None:
    probe = Flaky()
    monitor = HealthMonitor([DependencyCheck("db", probe, True)], interval_s=0.02)
    monitor.start()
    deadline = time.monotonic() + 5
    while probe.calls < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # poll
    monitor.interval_s = 60
    async with asyncio.timeout(10):  # prompt: it does not wait out the 60 s interval
        await monitor.stop()
    calls = probe.calls
    await asyncio.sleep(0.1)  # poll: a window in which nothing may probe after stop
    assert probe.calls == calls


async def test_drain_reports_unhealthy_for_good() -> None:
    seen: list[HealthReport] = []

    async def on_change(report: HealthReport) -> None:
        seen.append(report)

    monitor = HealthMonitor([DependencyCheck("db", Flaky(), True)], on_change=on_change)
    await monitor.refresh()
    await monitor.drain()
    assert (await monitor.refresh()).status == "unhealthy"
    assert [(r.status, r.draining) for r in seen] == [("healthy", False), ("unhealthy", True)]


def test_bad_configuration_is_rejected() -> None:
    probe = Flaky()
    with pytest.raises(ValueError, match="duplicate"):
        HealthMonitor([DependencyCheck("db", probe), DependencyCheck("db", probe)])
    with pytest.raises(ValueError, match="positive"):
        HealthMonitor([], interval_s=0)


def test_health_body_shape() -> None:
    report = summarise([failing("users", False)])
    body = health_body(report, AdminIdentity("orders", "orders-1", "2.0.0"))
    assert body == {
        "status": "degraded",
        "service": "orders",
        "instance": "orders-1",
        "version": "2.0.0",
        "checks": [
            {
                "name": "users",
                "required": False,
                "status": "failing",
                "error": "down",
                "latency_ms": 1.0,
            }
        ],
    }
    assert health_body(summarise([], draining=True), AdminIdentity("a", "b", "c"))["draining"]


async def test_database_check_against_real_sqlite(tmp_path: Path) -> None:
    good = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    bad = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'db.sqlite'}")
    try:
        checks = [database_check(good), database_check(bad, name="b")]
        report = await HealthMonitor(checks).refresh()
    finally:
        await good.dispose()
        await bad.dispose()
    assert [(c.name, c.required, c.status) for c in report.checks] == [
        ("database", True, "ok"),
        ("b", True, "failing"),
    ]
    assert "unable to open database file" in (report.checks[1].error or "")


async def test_nats_check_follows_the_connection_flag() -> None:
    class Conn:
        is_connected = True

    conn = Conn()
    check = nats_check(conn)
    assert (check.name, check.required) == ("nats", False)
    await check.probe()
    conn.is_connected = False
    with pytest.raises(DependencyFailed, match="not connected"):
        await check.probe()


async def test_registry_upstream_check() -> None:
    registry = MemoryRegistry()
    check = registry_upstream_check(registry, "users")
    assert (check.name, check.required) == ("users", False)
    with pytest.raises(DependencyFailed, match="no healthy instance of users"):
        await check.probe()
    await registry.register(Instance("u1", "users", "127.0.0.1", 1))
    await check.probe()


def test_proto_packages() -> None:
    assert proto_packages(
        ["shop.orders.v2.OrderService", "shop.orders.v1.OrderService", "shop.orders.v1.Admin"]
    ) == ["shop.orders.v1", "shop.orders.v2"]


async def test_a_lone_timeout_does_not_fail_a_required_check() -> None:
    """Under load a dependency answers late: one timeout of an ok check keeps it ok, a
    second in a row fails it, a probe that raises fails at once, and a check never seen
    ok fails on its first timeout."""
    slow = asyncio.Event()
    probe = Flaky()

    async def check() -> None:
        if slow.is_set():
            await asyncio.Event().wait()
        await probe()

    monitor = HealthMonitor(
        [DependencyCheck("db", check, True)], timeout_s=0.05, timeouts_to_fail=2
    )
    assert (await monitor.refresh()).status == "healthy"
    slow.set()
    assert (await monitor.refresh()).status == "healthy"  # one timeout
    report = await monitor.refresh()  # two in a row
    assert report.status == "unhealthy" and report.checks[0].error == "timed out after 0.05s"
    slow.clear()
    assert (await monitor.refresh()).status == "healthy"
    probe.error = DependencyFailed("connection refused")
    assert (await monitor.refresh()).status == "unhealthy"  # an error: at once
    probe.error = None
    slow.set()
    assert (await monitor.refresh()).status == "unhealthy"  # not ok before: fails at once
    fresh = HealthMonitor([DependencyCheck("db", check, True)], timeout_s=0.05, timeouts_to_fail=2)
    assert (await fresh.refresh()).status == "unhealthy"  # never seen ok (start-up)
    with pytest.raises(ValueError, match="timeouts_to_fail"):
        HealthMonitor([], timeouts_to_fail=0)


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mesh.health"]
    caplog.clear()
    return said


async def test_an_optional_dependency_not_up_yet_at_start_is_said_once_at_info(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up order (`meshctl up`): an optional upstream not up yet is INFO once, then
    quiet; up later is INFO; failing after it was up is a warning. Still failing past
    the patience is a warning once; a required check failing is a warning at once."""
    caplog.set_level("INFO", logger="mesh.health")
    users, db = Flaky(), Flaky()
    users.error = DependencyFailed("no healthy instance of users")
    checks = [DependencyCheck("db", db, True), DependencyCheck("users", users, False)]
    monitor = HealthMonitor(checks)
    await monitor.refresh()
    await monitor.refresh()
    waiting = "(DependencyFailed: no healthy instance of users); waiting for it"
    assert _said(caplog) == [("INFO", f"optional dependency users not up yet {waiting}")]
    users.error = None
    await monitor.refresh()
    assert _said(caplog) == [("INFO", "optional dependency users is up"),
                             ("INFO", "health degraded -> healthy")]  # fmt: skip
    users.error = DependencyFailed("no healthy instance of users")
    db.error = ConnectionRefusedError("refused")
    await monitor.refresh()
    assert _said(caplog) == [
        ("WARNING", "required dependency db failing: ConnectionRefusedError: refused"),
        ("WARNING", "optional dependency users failing: "
                    "DependencyFailed: no healthy instance of users"),
        ("WARNING", "health healthy -> unhealthy"),
    ]  # fmt: skip

    late, other = Flaky(), Flaky()
    late.error = other.error = DependencyFailed("down")
    monitor = HealthMonitor([DependencyCheck("late", late, False)])
    await monitor.refresh()
    assert [level for level, _ in _said(caplog)] == ["INFO"]
    monkeypatch.setattr(HealthMonitor, "STARTUP_PATIENCE_S", 0.0)
    await monitor.refresh()
    await monitor.refresh()
    assert _said(caplog) == [
        ("WARNING", "optional dependency late failing, 0s after start: DependencyFailed: down")
    ]
    # Past the patience from the start, a new monitor warns at once.
    await HealthMonitor([DependencyCheck("other", other, False)]).refresh()
    assert _said(caplog) == [
        ("WARNING", "optional dependency other failing: DependencyFailed: down")
    ]


async def test_a_dependency_awaited_at_start_is_seen_up_long_before_the_interval() -> None:
    """`meshctl status` right after "mesh is up": orders must not say degraded (users)
    for a whole interval after users came up. Awaited, it is probed every
    `STARTUP_RETRY_S`; once up, the monitor goes back to its interval."""
    users = Flaky()
    users.error = DependencyFailed("no healthy instance of users")
    monitor = HealthMonitor([DependencyCheck("users", users, False)], interval_s=30)
    assert (await monitor.refresh()).status == "degraded"
    monitor.start()
    try:
        users.error = None
        started = time.monotonic()
        while monitor.report.status != "healthy":
            assert time.monotonic() - started < 3, "still degraded: probed at the interval"
            await asyncio.sleep(0.05)  # poll
        assert monitor._next_wait() == 30
    finally:
        await monitor.stop()


async def test_database_check_answers_while_the_pool_is_exhausted(tmp_path: Path) -> None:
    """Every pooled connection held by requests: the probe has its own, so it passes."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'db.sqlite'}", pool_size=1, max_overflow=0, pool_timeout=5
    )
    try:
        async with engine.connect():  # the pool's only connection, held
            report = await HealthMonitor([database_check(engine)], timeout_s=1).refresh()
    finally:
        await engine.dispose()
    assert report.checks[0].status == "ok", report.checks[0].error
