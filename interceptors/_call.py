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


def _report(call: Any, callback: DoneCallback) -> None:
    try:
        code = _result_now(call.code())
        details = "" if code is grpc.StatusCode.OK else _result_now(call.details())
    except _Pending:
        task = asyncio.ensure_future(_report_later(call, callback))
        _PENDING_REPORTS.add(task)
        task.add_done_callback(_PENDING_REPORTS.discard)
        return
    # grpc swallows exceptions from done callbacks silently: log them instead.
    try:
        callback(code, details or "")
    except Exception:
        log.exception("call-done callback %r failed", callback)


async def _report_later(call: Any, callback: DoneCallback) -> None:
    code = await call.code()
    details = "" if code is grpc.StatusCode.OK else await call.details()
    try:
        callback(code, details or "")
    except Exception:
        log.exception("call-done callback %r failed", callback)


def when_done(call: Any, callback: DoneCallback) -> None:
    """Run `callback(code, details)` once when `call` has finished (details "" when OK).

    Works with any grpc.aio call object (public `done`, `add_done_callback`,
    `code`, `details`), so the interceptor can return the call at once: an
    interceptor that awaited the call instead would deadlock stream-request
    calls written with `call.write()` and buffer server streams.
    """
    if call.done():
        _report(call, callback)
    else:
        call.add_done_callback(lambda finished: _report(finished, callback))
