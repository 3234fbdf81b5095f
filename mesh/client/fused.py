"""The mesh's standard client chain for unary-unary calls, run as one coroutine.

Why: over the network, every Python frame a call runs costs several times what
it costs in a tight loop (the loop sleeps between calls, the caches go cold), so
the mesh client cost ~100 µs of CPU per call more than a bare grpc.aio client
while its chain measured ~21 µs without the network. Run as six interceptors
(end user → deadline → retry → breaker → tracing → metrics), a call goes
through six coroutine frames and their links, registers three status observers
and awaits the call's status through grpc's `code()` coroutine (a future per
call). Fused, the same steps run in one coroutine frame per call, with
one observer that settles metrics, span and breaker together, and the retry
loop awaits the call itself (grpc caches the response for the caller's await).

Each concern's code stays in its module: this runner calls the interceptors'
own steps (`EndUserClientInterceptor.details_for`, `DeadlineClientInterceptor.
unary_details`, `RetryClientInterceptor.begin/delay_after/next_details`,
`BreakerClientInterceptor.admit`, `TracingClientInterceptor.begin`,
`MetricsClientInterceptor.series`), in the chain's order, with the same
outcomes: statuses, metrics, spans and breaker transitions are compared with
the six separate interceptors in tests/integration/client/test_fastpath.py.

Limits: only unary-unary calls (the other arities are rarer and keep the
interceptor chain), only the exact standard chain (`MeshRuntime.
client_interceptors`: the interceptors' own classes, in that order; any
interceptor after it, `extra_interceptors`, runs inside as usual), and only with
the fast paths on (`MESH_FASTPATH=0` runs the six interceptors). One difference:
a caller's task cancelled while its call is in flight cancels the RPC, as
awaiting a bare grpc.aio call does (the separate retry interceptor awaits the
status instead and leaves the RPC to finish).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import grpc
from grpc.aio import ClientCallDetails

from interceptors import _fastpath
from interceptors._call import when_done
from interceptors.breaker import BreakerClientInterceptor, CircuitBreaker
from interceptors.deadline import DeadlineClientInterceptor
from interceptors.end_user import EndUserClientInterceptor
from interceptors.metrics import MetricsClientInterceptor, RpcSeries
from interceptors.retry import RetryClientInterceptor
from interceptors.tracing import TracingClientInterceptor, end_client_span

Continuation = Callable[[ClientCallDetails, Any], Awaitable[Any]]

_CANCELLED: Final = grpc.StatusCode.CANCELLED
_clock: Final = time.perf_counter


class _Settle:
    """The one status observer of an attempt: metrics, then the span, then the breaker
    (the order the separate interceptors' observers run in), each isolated."""

    __slots__ = ("breaker", "series", "span", "started", "ticket")

    def __init__(
        self, series: RpcSeries, started: float, span: Any, breaker: CircuitBreaker, ticket: int
    ) -> None:
        self.series = series
        self.started = started
        self.span = span
        self.breaker = breaker
        self.ticket = ticket

    def __call__(self, code: grpc.StatusCode, details: str) -> None:
        try:
            self.series.observe(code, _clock() - self.started)
        finally:
            try:
                if self.span is not None:
                    end_client_span(self.span, code, details)
            finally:
                self.breaker.release(self.ticket, code)


class FusedUnaryChain:
    """end user → deadline → retry → (breaker → tracing → metrics → `inner`) per attempt."""

    __slots__ = ("_breaker", "_deadline", "_end_user", "_metrics", "_retry", "_tracing")

    def __init__(
        self,
        end_user: EndUserClientInterceptor,
        deadline: DeadlineClientInterceptor,
        retry: RetryClientInterceptor,
        breaker: BreakerClientInterceptor,
        tracing: TracingClientInterceptor | None,
        metrics: MetricsClientInterceptor,
    ) -> None:
        self._end_user = end_user
        self._deadline = deadline
        self._retry = retry
        self._breaker = breaker
        self._tracing = tracing
        self._metrics = metrics

    def bind(self, inner: Continuation) -> Continuation:
        """The chain's continuation for one multicallable (`inner`: the rest, then the pick)."""
        return functools.partial(self._call, inner)

    async def _call(self, inner: Continuation, details: ClientCallDetails, request: Any) -> Any:
        details = self._deadline.unary_details(self._end_user.details_for(details))
        retry = self._retry
        tracing = self._tracing
        deadline = retry.begin(details)
        attempt_details = details
        attempt = 1
        while True:
            call = None
            try:
                # One attempt: breaker → tracing → metrics → inner (the pick), inline.
                breaker, ticket = self._breaker.admit(attempt_details)  # UNAVAILABLE if open
                sent, span = (
                    (attempt_details, None) if tracing is None else tracing.begin(attempt_details)
                )
                series = self._metrics.series(sent)
                started = _clock()
                try:
                    call = await inner(sent, request)
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                    series.observe(code, _clock() - started)
                    if span is not None:
                        end_client_span(span, code, err.details() or "")
                    breaker.release(ticket, code)
                    raise
                except BaseException as exc:
                    if span is not None:
                        span.record_exception(exc)
                        end_client_span(span, _CANCELLED, "")
                    breaker.release(ticket, _CANCELLED)
                    raise
                when_done(call, _Settle(series, started, span, breaker, ticket))
                await call  # the response stays cached in the call for the caller's await
                return call
            except grpc.aio.AioRpcError as err:
                error = err
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if call is not None and call.cancelled() and not (task and task.cancelling()):
                    return call  # cut by the mesh (channel closed): the caller's await says so
                raise
            delay = retry.delay_after(details, attempt, error, deadline)
            if delay is None:
                if call is not None:
                    return call  # finished with an error: the caller's await raises it
                raise error
            await retry.backoff(delay)
            attempt += 1
            attempt_details = retry.next_details(details, attempt, deadline)


def fuse(interceptors: Sequence[Any]) -> tuple[FusedUnaryChain | None, list[Any]]:
    """The fused chain when `interceptors` start with the exact standard chain (and the
    fast paths are on), and the interceptors after it; else (None, all of them)."""
    rest = list(interceptors)
    if not _fastpath.FUSE_CLIENT_CHAIN:
        return None, rest
    kinds: list[type] = [
        EndUserClientInterceptor,
        DeadlineClientInterceptor,
        RetryClientInterceptor,
        BreakerClientInterceptor,
    ]
    if len(rest) < 5 or [type(i) for i in rest[:4]] != kinds:
        return None, rest
    tracing: TracingClientInterceptor | None = None
    n = 4
    if type(rest[n]) is TracingClientInterceptor:
        tracing = rest[n]
        n += 1
    if len(rest) <= n or type(rest[n]) is not MetricsClientInterceptor:
        return None, rest
    chain = FusedUnaryChain(rest[0], rest[1], rest[2], rest[3], tracing, rest[n])
    return chain, rest[n + 1 :]
