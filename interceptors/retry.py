"""Retries that cannot make an outage worse.

A failed call is retried only when all of these hold:

- its code is retryable (`RetryPolicy.retryable_codes`: UNAVAILABLE, and
  RESOURCE_EXHAUSTED with a longer backoff: the server asked for less load);
- the method is idempotent (`is_idempotent(path)`, normally
  `mesh.api.options.IdempotentMethods`, built by the mesh), or the request was certainly
  not sent (see `not_sent`);
- attempts are left (`max_attempts` counts the first one);
- the backoff (exponential, jittered, or the server's
  `grpc-retry-pushback-ms`) ends before the call's deadline: it never sleeps
  past it, and each attempt gets only the time left;
- the retry budget allows it: retries stay under `ratio` of calls, plus a
  small floor per second, so a struggling server sees at most ~1.2x its load.

Errors an inner interceptor raised locally because the circuit breaker is
open are not retried: the breaker is shared, the retry would fail the same.

Arities: unary-unary as above. Unary-stream the same, but only until the
first response message: the interceptor reads ahead one message, retrying
while none came, and returns a call that replays it; after a message the
caller has seen data, so the error is theirs. Stream-unary and stream-stream
are never retried: their request iterator is consumed by the first attempt
and cannot be replayed.

`not_sent` heuristic: gRPC core has its own transparent retry for streams
that never left the client; what still surfaces is a connection that could
not be made. A failure counts as not sent when an inner interceptor raised it
locally (`local_error`) for a reason other than an open breaker, or when it is
UNAVAILABLE, no metadata at all came back (initial or trailing), and its
details *start* with one of the messages gRPC core gives a call no connection
carried (`_CORE_NOT_SENT`: "failed to connect to all addresses", "DNS
resolution failed for", ...). The text is checked at its start only: a server
may put those words anywhere in its own message ("card processor: failed to
connect to acquirer") after it acted on the call. A connection that broke
after the request was written ("Socket closed", "Connection reset") is *not*
counted: the server may have acted on it.

Limit: grpc.aio gives a server's trailers-only reply and a failure gRPC core
made up alike (same code, details, empty metadata, `debug_error_string()`
"UNAVAILABLE:<details>", grpcio 1.85), so nothing a client sees tells them
apart for certain. Every error a mesh server sends carries a
`grpc-status-details-bin` trailer (`interceptors.errors`), so it always counts
as sent, even when it forwards an upstream's "failed to connect to all
addresses..." verbatim (orders does); a foreign server aborting UNAVAILABLE
with no metadata and a message starting with gRPC core's exact words would
still be taken for not sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from base.backoff import backoff_cap, jittered
from interceptors._call import LOCAL_ERROR_KEY, method_name, replace_call_details, with_metadata
from interceptors._client import ClientInterceptor, Continuation, returns_call

if TYPE_CHECKING:
    from interceptors.metrics import RpcMetrics

# Sent on every retry with the attempt number (2, 3, ...): servers and logs can tell.
ATTEMPT_KEY = "mesh-attempt"
PUSHBACK_KEY = "grpc-retry-pushback-ms"

# How gRPC core's own status for a call no connection carried begins (read from grpcio
# 1.85's core): pick_first and round_robin with no reachable address, the c-ares and the
# EventEngine resolvers failing, a resolver finding no address. Case and all, at the very
# start. Should a grpcio release reword them, such calls are just not retried (safe), and
# test_unsent_non_idempotent_call_is_retried says so.
_CORE_NOT_SENT = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "DNS resolution failed for ",
    "errors resolving ",
    "empty address list",
)
_NOT_RETRIED_LOCAL = frozenset({"breaker-open", "deadline"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    retryable_codes: frozenset[grpc.StatusCode] = frozenset(
        {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    )
    # RESOURCE_EXHAUSTED waits this many times longer (cap included).
    exhausted_backoff_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1 or self.exhausted_backoff_factor < 1:
            raise ValueError("multiplier and exhausted_backoff_factor must be >= 1")

    def backoff_s(self, retry: int, code: grpc.StatusCode, rng: random.Random) -> float:
        """Delay before retry number `retry` (1 = first retry): in [cap/2, cap], cap growing.

        The shared formula (base/backoff.py); RESOURCE_EXHAUSTED multiplies the cap.
        """
        cap = backoff_cap(retry - 1, self.initial_backoff_s, self.max_backoff_s, self.multiplier)
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            cap *= self.exhausted_backoff_factor
        return jittered(cap, rng)


@dataclass(slots=True)
class RetryBudget:
    """Retries allowed per rolling window: `ratio` x calls + `min_retries_per_s` x window.

    Counted in one-second slots over `window_s` seconds; `record_call` and
    `try_spend` are O(1) apart from summing the slots when a retry is asked for.
    """

    ratio: float = 0.2
    min_retries_per_s: float = 1.0
    window_s: int = 10
    clock: Callable[[], float] = time.monotonic
    _calls: list[int] = field(init=False)
    _retries: list[int] = field(init=False)
    _epochs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1 or self.min_retries_per_s < 0 or self.window_s < 1:
            raise ValueError("need 0 <= ratio <= 1, min_retries_per_s >= 0, window_s >= 1")
        self._calls = [0] * self.window_s
        self._retries = [0] * self.window_s
        self._epochs = [-1] * self.window_s

    def _slot(self, second: int) -> int:
        i = second % self.window_s
        if self._epochs[i] != second:
            self._epochs[i] = second
            self._calls[i] = 0
            self._retries[i] = 0
        return i

    def record_call(self) -> None:
        """One original (not retried) call was made."""
        self._calls[self._slot(int(self.clock()))] += 1

    def try_spend(self) -> bool:
        """True (and counted) if one more retry fits in the budget now."""
        second = int(self.clock())
        oldest = second - self.window_s
        calls = retries = 0
        for i, epoch in enumerate(self._epochs):
            if epoch > oldest:
                calls += self._calls[i]
                retries += self._retries[i]
        if retries >= self.ratio * calls + self.min_retries_per_s * self.window_s:
            return False
        self._retries[self._slot(second)] += 1
        return True


def not_sent(
    code: grpc.StatusCode,
    details: str | None,
    initial_metadata: Any,
    trailing_metadata: Any,
) -> bool:
    """True when the failure certainly happened before the request left (see module doc).

    Any metadata means a server answered (the mesh's errors always carry a trailer);
    gRPC core's words count only at the start of the details, never inside a server's
    own message. Runs on the error path only.
    """
    if code is not grpc.StatusCode.UNAVAILABLE:
        return False
    for key, value in trailing_metadata or ():
        if key == LOCAL_ERROR_KEY:
            return value not in _NOT_RETRIED_LOCAL
    if initial_metadata or trailing_metadata:
        return False
    return (details or "").startswith(_CORE_NOT_SENT)


def _local_reason(trailing_metadata: Any) -> str | None:
    for key, value in trailing_metadata or ():
        if key == LOCAL_ERROR_KEY:
            return str(value)
    return None


@dataclass(slots=True)
class _Failure:
    code: grpc.StatusCode
    details: str | None
    initial_metadata: Any
    trailing_metadata: Any


async def _failure_of(call: Any, code: grpc.StatusCode) -> _Failure:
    return _Failure(
        code, await call.details(), await call.initial_metadata(), await call.trailing_metadata()
    )


def _failure_of_error(error: grpc.aio.AioRpcError) -> _Failure:
    return _Failure(
        error.code(), error.details(), error.initial_metadata(), error.trailing_metadata()
    )


class RetryClientInterceptor(ClientInterceptor):
    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        is_idempotent: Callable[[str], bool],
        metrics: RpcMetrics | None = None,
        *,
        service: str = "",
        rng: random.Random | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._budget = budget
        self._is_idempotent = is_idempotent
        self._metrics = metrics
        self._service = service
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock

    def _delay(
        self,
        details: grpc.aio.ClientCallDetails,
        attempt: int,
        failure: _Failure,
        deadline: float | None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None: do not retry."""
        policy = self._policy
        code = failure.code
        if attempt >= policy.max_attempts or code not in policy.retryable_codes:
            return None
        if _local_reason(failure.trailing_metadata) in _NOT_RETRIED_LOCAL:
            return None
        method = method_name(details)
        if not self._is_idempotent(method) and not not_sent(
            code, failure.details, failure.initial_metadata, failure.trailing_metadata
        ):
            return None
        delay = policy.backoff_s(attempt, code, self._rng)
        for key, value in failure.trailing_metadata or ():
            if key == PUSHBACK_KEY:
                # The server's word wins; a malformed or negative one means "do not retry".
                try:
                    delay = int(value) / 1000
                except ValueError:
                    return None
                if delay < 0:
                    return None
        if deadline is not None and self._clock() + delay >= deadline:
            return None
        if not self._budget.try_spend():
            if self._metrics is not None:
                self._metrics.record_retry_throttled(self._service, method)
            return None
        if self._metrics is not None:
            self._metrics.record_retry(self._service, method, code)
        return delay

    def _attempt_details(
        self, details: grpc.aio.ClientCallDetails, attempt: int, deadline: float | None
    ) -> grpc.aio.ClientCallDetails:
        new = with_metadata(details, [(ATTEMPT_KEY, str(attempt))])
        if deadline is None:
            return new
        return replace_call_details(new, timeout=max(deadline - self._clock(), 0.0))

    # -- what the mesh's fused client chain (mesh/client/fused.py) runs of this policy --

    def begin(self, details: grpc.aio.ClientCallDetails) -> float | None:
        """Count an original call in the budget; its absolute deadline (this clock) or None."""
        self._budget.record_call()
        timeout = details.timeout
        return None if timeout is None else self._clock() + timeout

    def delay_after(
        self,
        details: grpc.aio.ClientCallDetails,
        attempt: int,
        error: grpc.aio.AioRpcError,
        deadline: float | None,
    ) -> float | None:
        """Seconds to wait before retrying after attempt `attempt` failed with `error`, or
        None: do not retry (budget spent and metrics recorded as `intercept_*` does)."""
        return self._delay(details, attempt, _failure_of_error(error), deadline)

    async def backoff(self, delay: float) -> None:
        await self._sleep(delay)

    def next_details(
        self, details: grpc.aio.ClientCallDetails, attempt: int, deadline: float | None
    ) -> grpc.aio.ClientCallDetails:
        """The details of attempt number `attempt` (its header, the time left)."""
        return self._attempt_details(details, attempt, deadline)

    @returns_call
    async def intercept_unary_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        self._budget.record_call()
        timeout = client_call_details.timeout
        deadline = None if timeout is None else self._clock() + timeout
        details = client_call_details
        attempt = 1
        while True:
            try:
                call = await continuation(details, request)
                code = await call.code()
                if code is grpc.StatusCode.OK:
                    return call
                error: grpc.aio.AioRpcError | None = None
                failure = await _failure_of(call, code)
            except grpc.aio.AioRpcError as err:
                error, failure = err, _failure_of_error(err)
            delay = self._delay(client_call_details, attempt, failure, deadline)
            if delay is None:
                if error is not None:
                    raise error
                return call
            await self._sleep(delay)
            attempt += 1
            details = self._attempt_details(client_call_details, attempt, deadline)

    @returns_call
    async def intercept_unary_stream(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        self._budget.record_call()
        timeout = client_call_details.timeout
        deadline = None if timeout is None else self._clock() + timeout
        details = client_call_details
        attempt = 1
        while True:
            try:
                call = await continuation(details, request)
                # Read ahead one message: until one arrives a retry is invisible to the caller.
                first = await call.read()
                return PrefetchedUnaryStreamCall(call, first)
            except grpc.aio.AioRpcError as err:
                failure = _failure_of_error(err)
                delay = self._delay(client_call_details, attempt, failure, deadline)
                if delay is None:
                    raise
            await self._sleep(delay)
            attempt += 1
            details = self._attempt_details(client_call_details, attempt, deadline)

    @returns_call
    async def intercept_stream_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        # Never retried: the request iterator cannot be replayed.
        return await continuation(client_call_details, request_iterator)

    @returns_call
    async def intercept_stream_stream(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        # Never retried: the request iterator cannot be replayed.
        return await continuation(client_call_details, request_iterator)


class PrefetchedUnaryStreamCall(grpc.aio.UnaryStreamCall):  # type: ignore[type-arg]
    """A server-streaming call whose first message (or EOF) was already read.

    Reads go through `call.read()` (grpc.aio forbids mixing read() with
    iteration on one call); everything else is the call's own.
    """

    def __init__(self, call: Any, first: Any) -> None:
        self._call = call
        self._first = first
        self._pending_first = True
        self._aiter: AsyncIterator[Any] | None = None

    async def read(self) -> Any:
        if self._pending_first:
            self._pending_first = False
            first, self._first = self._first, None
            return first
        return await self._call.read()

    async def _iterate(self) -> AsyncIterator[Any]:
        eof = grpc.aio.EOF  # type: ignore[attr-defined]
        while True:
            message = await self.read()
            if message is eof:
                return
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._aiter is None:
            self._aiter = self._iterate()
        return self._aiter

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _inner: callback(self))

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        details: str = await self._call.details()
        return details

    async def debug_error_string(self) -> str | None:
        value: str | None = await self._call.debug_error_string()
        return value

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()
