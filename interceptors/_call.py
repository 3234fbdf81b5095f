"""Helpers shared by client interceptors: new call details, never mutated ones.

Also the two things every observing client interceptor needs whatever runs it
(grpc.aio's own chain or the mesh's lean runner, which hands out plain call
objects): learning a call's final status without blocking the interceptor
(`when_done`), and failing a call locally, before anything is sent
(`local_error`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

log = logging.getLogger(__name__)

_UNSET: Any = object()

# Trailing metadata key on errors an interceptor raised without sending the
# call; the value says why ("deadline", "breaker-open", or the lean runner's
# own, e.g. "no-instance"). The retry interceptor reads it.
LOCAL_ERROR_KEY = "mesh-local-error"

DoneCallback = Callable[[grpc.StatusCode, str], None]


def replace_call_details(
    details: grpc.aio.ClientCallDetails,
    *,
    timeout: float | None = _UNSET,
    metadata: grpc.aio.Metadata | None = _UNSET,
) -> grpc.aio.ClientCallDetails:
    """A copy of `details` with `timeout` and/or `metadata` replaced."""
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout if timeout is _UNSET else timeout,
        metadata=details.metadata if metadata is _UNSET else metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


def with_metadata(
    details: grpc.aio.ClientCallDetails, extra: list[tuple[str, str]]
) -> grpc.aio.ClientCallDetails:
    """A copy of `details` whose metadata has `extra` appended (a new Metadata object)."""
    md = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in extra:
        md.add(key, value)
    return replace_call_details(details, metadata=md)


def method_name(details: grpc.aio.ClientCallDetails) -> str:
    """The full method path as a str (`/pkg.Service/Method`)."""
    m: str | bytes = details.method
    return m.decode() if isinstance(m, bytes) else m


def split_method(full_method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` -> (`pkg.Service`, `Method`); tolerant of a missing slash."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def local_error(code: grpc.StatusCode, details: str, reason: str) -> grpc.aio.AioRpcError:
    """An error for a call failed locally, before it was sent; `reason` is machine-readable."""
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((LOCAL_ERROR_KEY, reason)),
        details,
        f"{code.name}: {details} (local, not sent)",
    )


def local_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The reason of an error made by `local_error`, else None."""
    trailing: Any = error.trailing_metadata()
    for key, value in trailing or ():
        if key == LOCAL_ERROR_KEY:
            return value if isinstance(value, str) else value.decode()
    return None


# Strong references to the rare report tasks (asyncio keeps only weak ones).
_PENDING_REPORTS: set[asyncio.Future[None]] = set()

_OK = grpc.StatusCode.OK
# Status numbers as gRPC core reports them -> grpc.StatusCode.
_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
# Where a call object keeps the done callback its observers share (see `when_done`).
_HUB_KEY = "_mesh_done_hub"


class _Pending(Exception):
    """The coroutine needed the event loop: its result is not ready yet."""


def _result_now(coro: Coroutine[Any, Any, Any]) -> Any:
    # A finished call's code()/details() are coroutines that complete without
    # suspending; stepping them once gets the value without a task (cheap,
    # and the callback runs before the caller's `await call` resumes).
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise _Pending


def _finished_status(call: Any) -> tuple[grpc.StatusCode, str] | None:
    """The (code, details) of a finished grpc.aio call read without a coroutine, or None.

    grpc.aio's own `code()`/`details()` await `_cython_call.status()`, which
    for a finished call is `_cython_call._status` (grpc/aio/_call.py); reading
    it directly costs no coroutine per observer. None (use the public
    coroutines) for any other call object; tests/unit/interceptors guards
    this against grpcio upgrades.
    """
    status = getattr(getattr(call, "_cython_call", None), "_status", None)
    if status is None:
        return None
    code = _BY_NUMBER.get(status.code())
    if code is None:
        return None
    return code, "" if code is _OK else (status.details() or "")


def _notify(callbacks: list[DoneCallback], code: grpc.StatusCode, details: str) -> None:
    for callback in callbacks:
        # grpc swallows exceptions from done callbacks silently: log them instead.
        try:
            callback(code, details)
        except Exception:
            log.exception("call-done callback %r failed", callback)


def _report(call: Any, callbacks: list[DoneCallback]) -> None:
    status = _finished_status(call)
    if status is not None:
        _notify(callbacks, *status)
        return
    try:
        code = _result_now(call.code())
        details = "" if code is _OK else _result_now(call.details())
    except _Pending:
        task = asyncio.ensure_future(_report_later(call, callbacks))
        _PENDING_REPORTS.add(task)
        task.add_done_callback(_PENDING_REPORTS.discard)
        return
    _notify(callbacks, code, details or "")


async def _report_later(call: Any, callbacks: list[DoneCallback]) -> None:
    code = await call.code()
    details = "" if code is _OK else await call.details()
    _notify(callbacks, code, details or "")


class _DoneHub:
    """The one done callback of a call, shared by all its observers.

    It reads the status of whatever call object the callback is given (a
    wrapper may pass itself or the call it wraps) and runs the observers'
    callbacks, each isolated, in the order they were added.
    """

    __slots__ = ("callbacks",)

    def __init__(self, callback: DoneCallback) -> None:
        self.callbacks = [callback]

    def __call__(self, call: Any) -> None:
        _report(call, self.callbacks)


def when_done(call: Any, callback: DoneCallback) -> None:
    """Run `callback(code, details)` once when `call` has finished (details "" when OK).

    Works with any grpc.aio call object (public `done`, `add_done_callback`,
    `code`, `details`), so the interceptor can return the call at once: an
    interceptor that awaited the call instead would deadlock stream-request
    calls written with `call.write()` and buffer server streams.

    Callbacks on one call run in the order they were added, each isolated
    (an exception is logged, the others still run). Breaker, metrics and
    sampled tracing all watch the same call: on a call that can hold
    attributes (grpc.aio's) they share one done callback and one status read.
    """
    if call.done():
        _report(call, [callback])
        return
    attrs: dict[str, Any] | None = getattr(call, "__dict__", None)
    if attrs is None:  # e.g. a slotted wrapper: a done callback of its own
        call.add_done_callback(_DoneHub(callback))
        return
    hub: _DoneHub | None = attrs.get(_HUB_KEY)
    if hub is None:
        hub = attrs[_HUB_KEY] = _DoneHub(callback)
        call.add_done_callback(hub)
    else:
        hub.callbacks.append(callback)
