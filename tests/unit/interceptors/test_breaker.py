"""Circuit breaker: the state machine on a fake clock, then through real servers."""

from __future__ import annotations

import re

import grpc
import pytest
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.breaker import (
    BreakerClientInterceptor,
    BreakerConfig,
    BreakerSet,
    BreakerState,
    CircuitBreaker,
)
from interceptors.metrics import RpcMetrics
from tests.support.ping_calls import (
    ARITIES,
    METHODS,
    NOT_FOUND,
    UNAVAILABLE,
    channel,
    invoke,
    invoke_error,
)

OK = grpc.StatusCode.OK
FAIL = grpc.StatusCode.UNAVAILABLE
CFG = BreakerConfig(failure_rate=0.5, min_calls=4, window_s=10, cooldown_s=5, half_open_calls=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not narrow the property


def run(breaker: CircuitBreaker, *codes: grpc.StatusCode) -> None:
    for code in codes:
        ticket = breaker.acquire()
        assert ticket is not None
        breaker.release(ticket, code)


def test_opens_at_the_failure_rate_once_enough_calls_were_seen():
    breaker = CircuitBreaker(CFG, clock=Clock())
    run(breaker, FAIL, FAIL, FAIL)  # 100% failures but only 3 calls
    assert state(breaker) is BreakerState.CLOSED
    run(breaker, OK)  # 3 of 4 failed: >= 50%
    assert state(breaker) is BreakerState.OPEN
    assert breaker.acquire() is None


def test_below_the_rate_stays_closed():
    breaker = CircuitBreaker(CFG, clock=Clock())
    run(breaker, OK, OK, FAIL, OK, OK, FAIL, OK)
    assert state(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.CANCELLED,
    ],
)
def test_client_side_errors_never_open_it(code):
    breaker = CircuitBreaker(CFG, clock=Clock())
    run(breaker, *[code] * 20)
    assert state(breaker) is BreakerState.CLOSED


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ],
)
def test_server_side_failures_open_it(code):
    breaker = CircuitBreaker(CFG, clock=Clock())
    run(breaker, *[code] * 4)
    assert state(breaker) is BreakerState.OPEN


def test_old_failures_leave_the_rolling_window():
    clock = Clock()
    breaker = CircuitBreaker(CFG, clock=clock)
    run(breaker, FAIL, FAIL, FAIL)
    clock.now += 11
    run(breaker, OK, OK, OK, FAIL)  # the 3 old failures no longer count: 1 of 4
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failure_rate() == (1, 4)


def test_half_open_after_cooldown_limits_probes_then_closes():
    clock = Clock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(CFG, clock=clock, on_change=lambda a, b: changes.append((a, b)))
    run(breaker, FAIL, FAIL, FAIL, FAIL)
    clock.now += 3.0
    assert breaker.acquire() is None
    assert breaker.retry_in() == pytest.approx(2.0)
    clock.now += 2.0
    first, second = breaker.acquire(), breaker.acquire()
    assert state(breaker) is BreakerState.HALF_OPEN
    assert first is not None and second is not None
    assert breaker.acquire() is None  # only half_open_calls probes at a time
    breaker.release(first, OK)
    assert state(breaker) is BreakerState.HALF_OPEN
    third = breaker.acquire()  # a probe slot freed up
    assert third is not None
    breaker.release(second, grpc.StatusCode.NOT_FOUND)  # an answer is a success
    assert state(breaker) is BreakerState.CLOSED
    breaker.release(third, FAIL)  # admitted before the change: ignored
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failure_rate() == (0, 0)
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_failed_probe_reopens_for_a_new_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(CFG, clock=clock)
    run(breaker, FAIL, FAIL, FAIL, FAIL)
    clock.now += 5
    probe = breaker.acquire()
    assert probe is not None
    breaker.release(probe, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(5.0)


def test_calls_admitted_before_opening_do_not_count_after():
    clock = Clock()
    breaker = CircuitBreaker(CFG, clock=clock)
    stale = breaker.acquire()
    assert stale is not None
    run(breaker, FAIL, FAIL, FAIL, FAIL)
    clock.now += 5
    probe = breaker.acquire()
    assert probe is not None
    breaker.release(stale, FAIL)  # from the closed period: not about the probe
    assert state(breaker) is BreakerState.HALF_OPEN


def test_cancelled_probe_frees_its_slot_without_deciding():
    clock = Clock()
    breaker = CircuitBreaker(CFG, clock=clock)
    run(breaker, FAIL, FAIL, FAIL, FAIL)
    clock.now += 5
    a, b = breaker.acquire(), breaker.acquire()
    assert a is not None and b is not None
    breaker.release(a, grpc.StatusCode.CANCELLED)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.acquire() is not None


@pytest.mark.parametrize(
    "kw", [{"failure_rate": 0}, {"min_calls": 0}, {"cooldown_s": 0}, {"half_open_calls": 0}]
)
def test_config_validates(kw):
    with pytest.raises(ValueError):
        BreakerConfig(**kw)


def test_breaker_set_reports_states_and_changes_to_metrics(caplog):
    clock = Clock()
    metrics = RpcMetrics(CollectorRegistry())
    breakers = BreakerSet(CFG, on_change=metrics.on_breaker_change, clock=clock)
    a = breakers.get("orders", "/x.S/A")
    breakers.get("orders", "/x.S/B")
    assert breakers.get("orders", "/x.S/A") is a
    labels = {"service": "orders", "method": "/x.S/A"}
    assert metrics.registry.get_sample_value("mesh_breaker_state", labels) == 0
    with caplog.at_level("INFO", logger="interceptors.breaker"):
        run(a, FAIL, FAIL, FAIL, FAIL)
    assert breakers.states() == {
        ("orders", "/x.S/A"): BreakerState.OPEN,
        ("orders", "/x.S/B"): BreakerState.CLOSED,
    }
    assert metrics.registry.get_sample_value("mesh_breaker_state", labels) == 2
    transition = {**labels, "from_state": "closed", "to_state": "open"}
    assert metrics.registry.get_sample_value("mesh_breaker_transitions_total", transition) == 1
    assert any(
        "closed -> open" in r.getMessage() and "4 of 4" in r.getMessage() for r in caplog.records
    )
    clock.now += 5
    assert breakers.states()[("orders", "/x.S/A")] is BreakerState.HALF_OPEN
    assert metrics.registry.get_sample_value("mesh_breaker_state", labels) == 1


# --- through a real server ------------------------------------------------------

FAILING = ping_pb2.PingRequest(value="x", error_code=UNAVAILABLE)


@pytest.mark.parametrize("arity", ARITIES)
async def test_open_breaker_fails_fast_without_calling_the_server(start_server, arity):
    srv = await start_server()
    breakers = BreakerSet(BreakerConfig(min_calls=3, cooldown_s=30))
    async with channel(srv.address, BreakerClientInterceptor(breakers, "ping")) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        for _ in range(3):
            err = await invoke_error(stub, arity, request=FAILING)
            assert err.details() == "asked to fail (x)"
        calls = srv.servicer.calls
        err = await invoke_error(stub, arity)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    pattern = rf"circuit breaker open for {re.escape(METHODS[arity])}; next probe in (\d+\.\d)s"
    match = re.fullmatch(pattern, err.details() or "")
    assert match is not None, err.details()
    assert 29.0 <= float(match.group(1)) <= 30.0
    assert srv.servicer.calls == calls  # not sent
    assert breakers.states() == {("ping", METHODS[arity]): BreakerState.OPEN}


async def test_breakers_are_per_method(start_server):
    srv = await start_server()
    breakers = BreakerSet(BreakerConfig(min_calls=2, cooldown_s=30))
    async with channel(srv.address, BreakerClientInterceptor(breakers, "ping")) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        for _ in range(2):
            await invoke_error(stub, "unary_unary", request=FAILING)
        await invoke_error(stub, "unary_unary")  # open
        assert len(await invoke(stub, "unary_stream")) == 2  # another method: closed


async def test_client_errors_through_a_real_server_keep_it_closed(start_server):
    srv = await start_server()
    breakers = BreakerSet(BreakerConfig(min_calls=2))
    async with channel(srv.address, BreakerClientInterceptor(breakers, "ping")) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        for _ in range(10):
            err = await invoke_error(
                stub, "unary_unary", request=ping_pb2.PingRequest(error_code=NOT_FOUND)
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND
    assert srv.servicer.calls == 10
    assert breakers.states()[("ping", METHODS["unary_unary"])] is BreakerState.CLOSED


async def test_recovers_through_half_open_probes(start_server):
    clock = Clock()
    srv = await start_server()
    breakers = BreakerSet(BreakerConfig(min_calls=2, cooldown_s=5, half_open_calls=2), clock=clock)
    key = ("ping", METHODS["unary_unary"])
    async with channel(srv.address, BreakerClientInterceptor(breakers, "ping")) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        for _ in range(2):
            await invoke_error(stub, "unary_unary", request=FAILING)
        assert breakers.states()[key] is BreakerState.OPEN
        clock.now += 5
        await invoke(stub, "unary_unary")
        assert breakers.states()[key] is BreakerState.HALF_OPEN
        await invoke(stub, "unary_unary")
        assert breakers.states()[key] is BreakerState.CLOSED
