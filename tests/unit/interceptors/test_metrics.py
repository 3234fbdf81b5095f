"""RpcMetrics and the metrics interceptors, both sides, all four arities."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.breaker import BreakerState
from interceptors.metrics import MetricsClientInterceptor, MetricsServerInterceptor, RpcMetrics
from tests.support.ping_calls import (
    ARITIES,
    METHODS,
    NOT_FOUND,
    channel,
    invoke,
    invoke_error,
)
from tests.support.poll import eventually


def value(metrics: RpcMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("arity", ARITIES)
async def test_red_metrics_on_both_sides(start_server, arity):
    client_m, server_m = RpcMetrics(CollectorRegistry()), RpcMetrics(CollectorRegistry())
    srv = await start_server(interceptors=[MetricsServerInterceptor(server_m)])
    async with channel(srv.address, MetricsClientInterceptor(client_m, "ping")) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        await invoke(stub, arity)
        await invoke(stub, arity)
        failing = ping_pb2.PingRequest(error_code=NOT_FOUND)
        assert (
            await invoke_error(stub, arity, request=failing)
        ).code() is grpc.StatusCode.NOT_FOUND
    grpc_service, grpc_method = METHODS[arity].lstrip("/").split("/")
    client = {"service": "ping", "grpc_service": grpc_service, "grpc_method": grpc_method}
    server = {"grpc_service": grpc_service, "grpc_method": grpc_method}
    await eventually(
        lambda: value(server_m, "grpc_server_handled_total", **server, grpc_code="NOT_FOUND") == 1
    )
    for m, labels, prefix in [(client_m, client, "grpc_client"), (server_m, server, "grpc_server")]:
        assert value(m, f"{prefix}_handled_total", **labels, grpc_code="OK") == 2
        assert value(m, f"{prefix}_handled_total", **labels, grpc_code="NOT_FOUND") == 1
        assert value(m, f"{prefix}_handling_seconds_count", **labels) == 3
        assert 0 < value(m, f"{prefix}_handling_seconds_sum", **labels) < 5


async def test_locally_failed_calls_are_counted(start_server):
    # A call an inner interceptor refused (here: no server at all) still counts.
    metrics = RpcMetrics(CollectorRegistry())
    async with channel("127.0.0.1:1", MetricsClientInterceptor(metrics, "gone")) as ch:
        await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    labels = {"service": "gone", "grpc_service": "shop.testing.v1.PingService"}
    assert (
        value(
            metrics,
            "grpc_client_handled_total",
            **labels,
            grpc_method="Ping",
            grpc_code="UNAVAILABLE",
        )
        == 1
    )


def test_registries_are_independent_and_the_default_one_untouched():
    from prometheus_client import REGISTRY

    a, b = RpcMetrics(CollectorRegistry()), RpcMetrics(CollectorRegistry())
    a.record_ejection("orders", "orders-1")
    a.record_ejection("orders", "orders-1")
    b.record_retry("orders", "/x.S/M", grpc.StatusCode.UNAVAILABLE)
    assert value(a, "mesh_client_ejections_total", service="orders", instance="orders-1") == 2
    assert value(b, "mesh_client_ejections_total", service="orders", instance="orders-1") == 0
    assert (
        REGISTRY.get_sample_value(
            "mesh_client_retries_total",
            {"service": "orders", "method": "/x.S/M", "grpc_code": "UNAVAILABLE"},
        )
        is None
    )


def test_breaker_gauge_and_transitions():
    m = RpcMetrics(CollectorRegistry())
    m.on_breaker_change("orders", "/x.S/M", None, BreakerState.CLOSED)
    assert value(m, "mesh_breaker_state", service="orders", method="/x.S/M") == 0
    m.on_breaker_change("orders", "/x.S/M", BreakerState.CLOSED, BreakerState.OPEN)
    m.on_breaker_change("orders", "/x.S/M", BreakerState.OPEN, BreakerState.HALF_OPEN)
    assert value(m, "mesh_breaker_state", service="orders", method="/x.S/M") == 1
    labels = {"service": "orders", "method": "/x.S/M"}
    assert (
        value(m, "mesh_breaker_transitions_total", **labels, from_state="closed", to_state="open")
        == 1
    )
    text = generate_latest(m.registry).decode()
    for name in (
        "grpc_client_handled_total",
        "grpc_client_handling_seconds",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "mesh_breaker_state",
        "mesh_breaker_transitions_total",
        "mesh_client_retries_total",
        "mesh_client_retries_throttled_total",
        "mesh_client_ejections_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
