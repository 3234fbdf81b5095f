"""Retries: safe codes, idempotent or unsent calls only, backoff within the deadline, budget."""

from __future__ import annotations

import random
import time
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from base.errors import Unavailable
from interceptors._call import local_error
from interceptors._client import ClientInterceptor
from interceptors.errors import ErrorServerInterceptor
from interceptors.metrics import RpcMetrics
from interceptors.retry import (
    ATTEMPT_KEY,
    RetryBudget,
    RetryClientInterceptor,
    RetryPolicy,
    not_sent,
)
from mesh.api.options import IdempotentMethods
from tests.support.ping import PingServicer
from tests.support.ping_calls import (
    METHODS,
    Flaky,
    channel,
    invoke,
    invoke_error,
)
from tests.support.ports import free_port

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.005)
# What gRPC core says of a call no connection carried, and what a server may say itself.
CORE_REFUSED = "failed to connect to all addresses; last error: UNKNOWN: Connection refused"
SERVER_TEXT = "card processor: failed to connect to acquirer (connection refused)"


class Attempts(ClientInterceptor):
    """Inside the retry interceptor: counts the attempts actually made."""

    def __init__(self) -> None:
        self.count = 0

    async def intercept(self, continuation, client_call_details, request):
        self.count += 1
        return await continuation(client_call_details, request)

    intercept_unary_unary = intercept_unary_stream = intercept
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]


def retrying(**kw: Any) -> RetryClientInterceptor:
    return RetryClientInterceptor(
        kw.pop("policy", FAST),
        kw.pop("budget", RetryBudget(min_retries_per_s=100)),
        kw.pop("is_idempotent", IdempotentMethods()),
        rng=random.Random(1),
        **kw,
    )


@pytest.mark.parametrize("arity", ["unary_unary", "unary_stream"])
async def test_idempotent_call_is_retried_until_it_succeeds(start_server, arity):
    srv = await start_server(Flaky(failures=2))
    metrics = RpcMetrics(CollectorRegistry())
    async with channel(srv.address, retrying(metrics=metrics, service="ping")) as ch:
        got = await invoke(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert got and srv.servicer.calls == 3
    attempts = [dict(md).get(ATTEMPT_KEY) for md in srv.servicer.metadata_seen]
    assert attempts == [None, "2", "3"]
    labels = {"service": "ping", "method": METHODS[arity], "grpc_code": "UNAVAILABLE"}
    assert metrics.registry.get_sample_value("mesh_client_retries_total", labels) == 2


async def test_gives_up_after_max_attempts_with_the_last_error(start_server):
    srv = await start_server(Flaky(failures=10))
    async with channel(srv.address, retrying()) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == "flaky"
    assert srv.servicer.calls == 3


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND]
)
async def test_unsafe_codes_are_not_retried(start_server, code):
    srv = await start_server(Flaky(failures=1, code=code))
    async with channel(srv.address, retrying()) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    assert err.code() == code and srv.servicer.calls == 1


@pytest.mark.parametrize("arity", ["unary_unary", "unary_stream"])
async def test_sent_non_idempotent_call_is_not_retried(start_server, arity):
    srv = await start_server(Flaky(failures=1))
    async with channel(srv.address, retrying(is_idempotent=lambda _m: False)) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and srv.servicer.calls == 1


@pytest.mark.parametrize("arity", ["unary_unary", "unary_stream"])
async def test_unsent_non_idempotent_call_is_retried(arity):
    # Nothing listens there: the connection fails before any request is written.
    attempts = Attempts()
    address = f"127.0.0.1:{free_port()}"
    async with channel(address, retrying(is_idempotent=lambda _m: False), attempts) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # gRPC core's own words, at the start: what `not_sent` recognises (retry.py).
    assert (err.details() or "").startswith("failed to connect to all addresses")
    assert attempts.count == 3


class ForwardsUpstreamText(PingServicer):
    """A mesh servicer that acted on the call, then reports an upstream's failure verbatim
    (as orders does with `UpstreamError`): gRPC core's words at the start of its message."""

    async def Ping(self, request, context):  # type: ignore[override]
        self.calls += 1
        raise Unavailable(CORE_REFUSED)


@pytest.mark.parametrize("arity", ["unary_unary", "unary_stream"])
async def test_server_text_with_connect_words_is_not_taken_for_unsent(start_server, arity):
    # The server handled the call (say, took a charge) and only its message mentions a
    # connection failure: a non-idempotent call must not run again.
    srv = await start_server(Flaky(failures=3, message=SERVER_TEXT))
    async with channel(srv.address, retrying(is_idempotent=lambda _m: False)) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == SERVER_TEXT
    assert srv.servicer.calls == 1


async def test_mesh_server_forwarding_core_text_is_not_retried(start_server):
    # Even gRPC core's exact words at the start: a mesh server's error carries its
    # `grpc-status-details-bin` trailer, and a reply with metadata was sent.
    srv = await start_server(ForwardsUpstreamText(), interceptors=[ErrorServerInterceptor()])
    async with channel(srv.address, retrying(is_idempotent=lambda _m: False)) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    assert err.code() == grpc.StatusCode.UNAVAILABLE and err.details() == CORE_REFUSED
    assert srv.servicer.calls == 1


def test_fused_chain_step_does_not_retry_server_text():
    # `delay_after` is what mesh/client/fused.py runs: the same decision.
    details = grpc.aio.ClientCallDetails(METHODS["unary_unary"], None, None, None, None)
    interceptor = retrying(is_idempotent=lambda _m: False)
    empty = grpc.aio.Metadata()
    unavailable = grpc.StatusCode.UNAVAILABLE
    server = grpc.aio.AioRpcError(unavailable, empty, empty, SERVER_TEXT, "")
    assert interceptor.delay_after(details, 1, server, None) is None
    core = grpc.aio.AioRpcError(unavailable, empty, empty, CORE_REFUSED, "")
    assert interceptor.delay_after(details, 1, core, None) is not None


@pytest.mark.parametrize("arity", ["stream_unary", "stream_stream"])
async def test_client_streaming_calls_are_never_retried(start_server, arity):
    srv = await start_server(Flaky(failures=1))
    async with channel(srv.address, retrying(is_idempotent=lambda _m: True)) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and srv.servicer.calls == 1


async def test_server_stream_is_not_retried_after_a_message_arrived(start_server):
    srv = await start_server(Flaky(failures=0, fail_after_first=True))
    got: list[str] = []
    async with channel(srv.address, retrying()) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for msg in stub.PingList(ping_pb2.PingRequest(count=3)):
                got.append(msg.value)
    assert got == ["first"]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert srv.servicer.calls == 1


async def test_prefetched_stream_supports_read_and_status(start_server):
    srv = await start_server(Flaky(failures=1))
    async with channel(srv.address, retrying()) as ch:
        stub: Any = ping_pb2_grpc.PingServiceStub(ch)
        call = stub.PingList(ping_pb2.PingRequest(value="r", count=2))
        values = []
        while (msg := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            values.append(msg.counter)
        assert values == [0, 1]
        assert await call.code() == grpc.StatusCode.OK


async def test_resource_exhausted_backs_off_longer(start_server):
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        srv = await start_server(Flaky(failures=1, code=code))
        async with channel(srv.address, retrying(policy=policy, sleep=record)) as ch:
            await invoke(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    unavailable, exhausted = delays
    assert 0.005 <= unavailable <= 0.01
    assert 0.02 <= exhausted <= 0.04


async def test_never_sleeps_past_the_deadline(start_server):
    srv = await start_server(Flaky(failures=5))
    slow = RetryPolicy(max_attempts=5, initial_backoff_s=2.0, max_backoff_s=2.0)
    start = time.monotonic()
    async with channel(srv.address, retrying(policy=slow)) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary", timeout=0.5)
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # the real failure, not a timeout
    assert time.monotonic() - start < 0.4
    assert srv.servicer.calls == 1


async def test_each_attempt_gets_only_the_time_left(start_server):
    srv = await start_server(Flaky(failures=1))
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.2, max_backoff_s=0.2)
    async with channel(srv.address, retrying(policy=policy)) as ch:
        await invoke(ping_pb2_grpc.PingServiceStub(ch), "unary_unary", timeout=2.0)
    first, second = srv.servicer.time_remaining_seen
    assert first is not None and second is not None
    # The second attempt started after a 0.1-0.2 s backoff, with the original deadline.
    assert 1.7 < second < first - 0.09 and first <= 2.1


async def test_server_pushback_is_honoured(start_server):
    srv = await start_server(Flaky(failures=1, trailing=(("grpc-retry-pushback-ms", "-1"),)))
    async with channel(srv.address, retrying()) as ch:
        await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    assert srv.servicer.calls == 1
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    srv = await start_server(Flaky(failures=1, trailing=(("grpc-retry-pushback-ms", "7"),)))
    async with channel(srv.address, retrying(sleep=record)) as ch:
        await invoke(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    assert delays == [0.007]


async def test_spent_budget_stops_retries(start_server):
    srv = await start_server(Flaky(failures=100))
    metrics = RpcMetrics(CollectorRegistry())
    budget = RetryBudget(ratio=0.0, min_retries_per_s=0.0)
    async with channel(srv.address, retrying(budget=budget, metrics=metrics, service="p")) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        for _ in range(3):
            await invoke_error(stub, "unary_unary")
    assert srv.servicer.calls == 3
    labels = {"service": "p", "method": METHODS["unary_unary"]}
    assert metrics.registry.get_sample_value("mesh_client_retries_throttled_total", labels) == 3


async def test_budget_keeps_retries_near_the_ratio_during_an_outage(start_server):
    srv = await start_server(Flaky(failures=10_000))
    budget = RetryBudget(ratio=0.2, min_retries_per_s=0.0)
    async with channel(srv.address, retrying(budget=budget)) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        for _ in range(50):
            await invoke_error(stub, "unary_unary")
    retries = srv.servicer.calls - 50
    assert 8 <= retries <= 10  # at most 20% of 50 calls


async def test_open_breaker_errors_are_not_retried():
    attempts = 0

    async def continuation(details: Any, request: Any) -> Any:
        nonlocal attempts
        attempts += 1
        raise local_error(grpc.StatusCode.UNAVAILABLE, "circuit breaker open", "breaker-open")

    details = grpc.aio.ClientCallDetails(METHODS["unary_unary"], None, None, None, None)
    with pytest.raises(grpc.aio.AioRpcError):
        await retrying().intercept_unary_unary(continuation, details, ping_pb2.PingRequest())
    assert attempts == 1


async def test_other_local_unavailable_errors_count_as_unsent():
    attempts = 0

    async def continuation(details: Any, request: Any) -> Any:
        nonlocal attempts
        attempts += 1
        raise local_error(grpc.StatusCode.UNAVAILABLE, "no healthy instance", "no-instance")

    details = grpc.aio.ClientCallDetails(METHODS["unary_unary"], None, None, None, None)
    interceptor = retrying(is_idempotent=lambda _m: False)
    with pytest.raises(grpc.aio.AioRpcError):
        await interceptor.intercept_unary_unary(continuation, details, ping_pb2.PingRequest())
    assert attempts == 3


def test_backoff_grows_with_jitter_and_caps():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, multiplier=2.0)
    rng = random.Random(7)
    for retry, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 0.4)]:
        values = [policy.backoff_s(retry, grpc.StatusCode.UNAVAILABLE, rng) for _ in range(200)]
        assert all(cap / 2 <= v <= cap for v in values)
        assert max(values) - min(values) > cap / 4  # jittered, not constant
    exhausted = policy.backoff_s(1, grpc.StatusCode.RESOURCE_EXHAUSTED, rng)
    assert 0.2 <= exhausted <= 0.4


@pytest.mark.parametrize(
    "kw", [{"max_attempts": 0}, {"initial_backoff_s": 0}, {"initial_backoff_s": 2.0}]
)
def test_policy_validates(kw):
    with pytest.raises(ValueError):
        RetryPolicy(**kw)


def test_budget_floor_ratio_and_window():
    now = [100.0]
    budget = RetryBudget(ratio=0.2, min_retries_per_s=0.5, window_s=10, clock=lambda: now[0])
    # Floor alone: 0.5/s over 10 s = 5 retries with no calls at all.
    assert [budget.try_spend() for _ in range(6)] == [True] * 5 + [False]
    for _ in range(50):
        budget.record_call()
    # 20% of 50 calls = 10 more (15 in total in the window).
    assert sum(budget.try_spend() for _ in range(20)) == 10
    now[0] += 11  # the window has passed: old calls and retries are forgotten
    assert sum(budget.try_spend() for _ in range(20)) == 5


def test_not_sent_heuristic():
    refused = CORE_REFUSED
    assert not_sent(grpc.StatusCode.UNAVAILABLE, refused, None, None)
    assert not_sent(grpc.StatusCode.UNAVAILABLE, "DNS resolution failed for x:1: ...", (), ())
    assert not not_sent(grpc.StatusCode.UNAVAILABLE, "Socket closed", None, None)
    assert not not_sent(grpc.StatusCode.UNAVAILABLE, refused, (("k", "v"),), None)
    assert not not_sent(grpc.StatusCode.UNAVAILABLE, refused, None, (("k", "v"),))
    assert not not_sent(grpc.StatusCode.INTERNAL, refused, None, None)
    # gRPC core's words inside a server's own message, or in another case: sent.
    assert not not_sent(grpc.StatusCode.UNAVAILABLE, SERVER_TEXT, None, None)
    assert not not_sent(grpc.StatusCode.UNAVAILABLE, f"payments: {refused}", None, None)
    assert not not_sent(grpc.StatusCode.UNAVAILABLE, refused.upper(), None, None)
    local = (("mesh-local-error", "no-instance"),)
    assert not_sent(grpc.StatusCode.UNAVAILABLE, "x", None, local)
    assert not not_sent(
        grpc.StatusCode.UNAVAILABLE, "x", None, (("mesh-local-error", "breaker-open"),)
    )
