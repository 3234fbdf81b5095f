"""Circuit breakers per (service, method): stop calling what keeps failing, probe, recover.

    closed --(failure rate >= threshold over the rolling window,
              with at least min_calls calls)--> open
    open --(cooldown passed; checked on the next call)--> half-open
    half-open: at most `half_open_calls` probe calls in flight; others fail fast
    half-open --(half_open_calls probes succeeded)--> closed
    half-open --(any probe failed)--> open (a new cooldown)

Only server-side failures count (`failure_codes`: UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, UNKNOWN); any other answer, INVALID_ARGUMENT or
NOT_FOUND included, proves the server works and counts as a success.
CANCELLED (the caller gave up) counts as neither. A call that started before
a state change does not affect the new state (each admission carries the
generation it was admitted in).

An open breaker fails the call fast with UNAVAILABLE without sending it,
"circuit breaker open for /pkg.Svc/M; next probe in 3.2s". The state machine
is plain synchronous code with an injectable clock (no asyncio, no timers):
state changes are evaluated when calls are admitted or finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import grpc

from interceptors._call import local_error, method_name, when_done
from interceptors._client import ClientInterceptor, Continuation, returns_call

log = logging.getLogger(__name__)


class BreakerState(IntEnum):
    """Values are the `mesh_breaker_state` gauge's."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


DEFAULT_FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_rate: float = 0.5
    min_calls: int = 10
    window_s: float = 10.0
    cooldown_s: float = 5.0
    half_open_calls: int = 3
    failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES
    # The rolling window is counted in this many slots (of window_s / buckets).
    buckets: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_calls < 1 or self.half_open_calls < 1 or self.buckets < 1:
            raise ValueError("min_calls, half_open_calls and buckets must be at least 1")
        if self.window_s <= 0 or self.cooldown_s <= 0:
            raise ValueError("window_s and cooldown_s must be positive")


StateCallback = Callable[[BreakerState, BreakerState], None]

_CLOSED = BreakerState.CLOSED
_CANCELLED = grpc.StatusCode.CANCELLED


class CircuitBreaker:
    """One breaker. `acquire()` before a call, `release(ticket, code)` after it."""

    __slots__ = (
        "_calls",
        "_clock",
        "_failures",
        "_generation",
        "_in_flight",
        "_on_change",
        "_opened_at",
        "_slot",
        "_slot_calls",
        "_slot_failures",
        "_slot_width",
        "_state",
        "_successes",
        "config",
    )

    def __init__(
        self,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateCallback | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._in_flight = 0
        self._successes = 0
        # Rolling window: per-slot counts plus running totals over the live slots.
        self._slot_width = config.window_s / config.buckets
        self._slot_calls = [0] * config.buckets
        self._slot_failures = [0] * config.buckets
        self._slot = int(clock() / self._slot_width)
        self._calls = 0
        self._failures = 0

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose cooldown passed reads as half-open)."""
        if self._state is BreakerState.OPEN and self.retry_in() <= 0:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 unless open)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.cooldown_s - self._clock())

    def failure_rate(self) -> tuple[int, int]:
        """(failures, calls) in the rolling window."""
        self._advance(self._clock())
        return self._failures, self._calls

    def acquire(self) -> int | None:
        """A ticket for a call allowed now, or None: fail fast."""
        if self._state is _CLOSED:  # the per-call path: no property, no clock
            return self._generation
        state = self.state
        if state is BreakerState.CLOSED:
            return self._generation
        if state is BreakerState.HALF_OPEN and self._in_flight < self.config.half_open_calls:
            self._in_flight += 1
            return self._generation
        return None

    def release(self, ticket: int, code: grpc.StatusCode) -> None:
        """Record how an admitted call ended."""
        if ticket != self._generation:
            return  # admitted before the last state change: not evidence about now
        failed = code in self.config.failure_codes
        if self._state is _CLOSED:
            if code is not _CANCELLED:
                self._record(failed)
        elif self._state is BreakerState.HALF_OPEN:
            self._in_flight -= 1
            if code is grpc.StatusCode.CANCELLED:
                return
            if failed:
                self._transition(BreakerState.OPEN)
            else:
                self._successes += 1
                if self._successes >= self.config.half_open_calls:
                    self._transition(BreakerState.CLOSED)

    def _advance(self, now: float) -> None:
        slot = int(now / self._slot_width)
        if slot != self._slot:
            self._advance_to(slot)

    def _advance_to(self, slot: int) -> None:
        """Forget the slots that left the window on the way to `slot`."""
        n = self.config.buckets
        for s in range(self._slot + 1, self._slot + 1 + min(slot - self._slot, n)):
            i = s % n
            self._calls -= self._slot_calls[i]
            self._failures -= self._slot_failures[i]
            self._slot_calls[i] = self._slot_failures[i] = 0
        self._slot = slot

    def _record(self, failed: bool) -> None:
        cfg = self.config
        slot = int(self._clock() / self._slot_width)
        if slot != self._slot:
            self._advance_to(slot)
        i = slot % cfg.buckets
        self._slot_calls[i] += 1
        calls = self._calls = self._calls + 1
        if failed:
            self._slot_failures[i] += 1
            self._failures += 1
        # Checked on successes too: the min_calls-th call may be one.
        if calls >= cfg.min_calls and self._failures >= cfg.failure_rate * calls:
            self._transition(BreakerState.OPEN)

    def _reset_window(self) -> None:
        for i in range(self.config.buckets):
            self._slot_calls[i] = self._slot_failures[i] = 0
        self._calls = self._failures = 0

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._in_flight = 0
        self._successes = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
        elif new is BreakerState.CLOSED:
            self._reset_window()
        if self._on_change is not None:
            try:
                self._on_change(old, new)
            except Exception:
                log.exception("circuit breaker state callback failed")


BreakerChange = Callable[[str, str, BreakerState | None, BreakerState], None]


class BreakerSet:
    """The breakers of a process, keyed by (service, method), created on first use.

    `on_change(service, method, old, new)` is called on every transition, and
    once with `old=None` when a breaker is created (so a gauge starts at 0);
    `RpcMetrics.on_breaker_change` fits.
    """

    def __init__(
        self,
        config: BreakerConfig,
        *,
        on_change: BreakerChange | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._on_change = on_change
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, service: str, method: str) -> CircuitBreaker:
        key = (service, method)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(
                self.config,
                clock=self._clock,
                on_change=lambda old, new: self._changed(service, method, old, new),
            )
            if self._on_change is not None:
                self._on_change(service, method, None, BreakerState.CLOSED)
        return breaker

    def _changed(self, service: str, method: str, old: BreakerState, new: BreakerState) -> None:
        breaker = self._breakers[(service, method)]
        if new is BreakerState.OPEN:
            failures, calls = breaker.failure_rate()
            log.warning(
                "circuit breaker for %s %s: %s -> open (%d of %d calls failed; probing in %.1fs)",
                service,
                method,
                old.name.lower(),
                failures,
                calls,
                self.config.cooldown_s,
                extra={"service": service, "rpc_method": method, "breaker_state": "open"},
            )
        else:
            log.info(
                "circuit breaker for %s %s: %s -> %s",
                service,
                method,
                old.name.lower(),
                new.name.lower(),
                extra={"service": service, "rpc_method": method, "breaker_state": new.name.lower()},
            )
        if self._on_change is not None:
            self._on_change(service, method, old, new)

    def states(self) -> Mapping[tuple[str, str], BreakerState]:
        """Current state of every breaker (for `meshctl status`)."""
        return {key: breaker.state for key, breaker in self._breakers.items()}


class BreakerClientInterceptor(ClientInterceptor):
    """Admits calls to `service` through its per-method breakers (all four arities)."""

    def __init__(self, breakers: BreakerSet, service: str) -> None:
        self._breakers = breakers
        self._service = service
        self._by_method: dict[Any, tuple[str, CircuitBreaker]] = {}

    def admit(self, details: grpc.aio.ClientCallDetails) -> tuple[CircuitBreaker, int]:
        """The method's breaker and the admission ticket to release with the call's code;
        raises UNAVAILABLE (local, "breaker-open") when the breaker does not admit it.

        Shared by `intercept` and the mesh's fused client chain (mesh/client/fused.py)."""
        entry = self._by_method.get(details.method)
        if entry is None:
            name = method_name(details)
            entry = self._by_method[details.method] = (
                name,
                self._breakers.get(self._service, name),
            )
        name, breaker = entry
        ticket = breaker.acquire()
        if ticket is None:
            if breaker.state is BreakerState.OPEN:
                text = f"circuit breaker open for {name}; next probe in {breaker.retry_in():.1f}s"
            else:
                text = (
                    f"circuit breaker half-open for {name}; "
                    f"{breaker.config.half_open_calls} probe calls already in flight"
                )
            raise local_error(grpc.StatusCode.UNAVAILABLE, text, "breaker-open")
        return breaker, ticket

    @returns_call
    async def intercept(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = client_call_details
        breaker, ticket = self.admit(details)
        try:
            call = await continuation(details, request)
        except grpc.aio.AioRpcError as err:
            breaker.release(ticket, err.code())
            raise
        except BaseException:
            breaker.release(ticket, grpc.StatusCode.CANCELLED)
            raise
        when_done(call, lambda code, _details: breaker.release(ticket, code))
        return call

    intercept_unary_unary = intercept_unary_stream = intercept
    # grpc passes arguments positionally: `request` stands for `request_iterator` too.
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]
