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
from collections.abc import Callable
from typing import Any

import grpc

from interceptors import _fastpath

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
# Where a call object keeps the done callback its observers share (see `when_done`).
_HUB_KEY = "_mesh_done_hub"


def _notify(callbacks: list[DoneCallback], code: grpc.StatusCode, details: str) -> None:
    for callback in callbacks:
        # grpc swallows exceptions from done callbacks silently: log them instead.
        try:
            callback(code, details)
        except Exception:
            log.exception("call-done callback %r failed", callback)


def _report(call: Any, callbacks: list[DoneCallback]) -> None:
    # The status without a task when the fenced fast path can read it (see
    # interceptors/_fastpath.py); otherwise grpc's public coroutines, in a task.
    status = _fastpath.status_now(call)
    if status is not None:
        _notify(callbacks, *status)
        return
    task = asyncio.ensure_future(_report_later(call, callbacks))
    _PENDING_REPORTS.add(task)
    task.add_done_callback(_PENDING_REPORTS.discard)


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
