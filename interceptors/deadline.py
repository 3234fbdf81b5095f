"""Deadlines: a default per call, and propagation from the incoming call to the calls it makes.

Server side, `DeadlineServerInterceptor` stores the incoming call's absolute
deadline in `interceptors.context.incoming_deadline` for the handler's task.
Client side, `DeadlineClientInterceptor` gives each call
`min(own timeout or default, time left on the incoming call)`; when the
incoming call's deadline has already passed the call fails fast with
DEADLINE_EXCEEDED without being sent (the caller has given up: work done
downstream would be wasted).

Streams get the default only when `stream_timeout_s` is set: a server stream
may be a long-lived watch, and a default deadline would cut it. Propagation
applies to all four arities regardless.
"""

from __future__ import annotations

import time
from contextvars import Token
from typing import Any

import grpc

from interceptors._call import local_error, method_name
from interceptors._client import ClientInterceptor, Continuation, returns_call
from interceptors._handler import ObservingServerInterceptor
from interceptors.context import incoming_deadline, remaining_deadline


class DeadlineClientInterceptor(ClientInterceptor):
    def __init__(self, default_timeout_s: float, *, stream_timeout_s: float | None = None) -> None:
        if default_timeout_s <= 0:
            raise ValueError("default_timeout_s must be positive")
        self._default = default_timeout_s
        self._stream_default = stream_timeout_s

    def _details(
        self, details: grpc.aio.ClientCallDetails, default: float | None
    ) -> grpc.aio.ClientCallDetails:
        own = details.timeout
        timeout = default if own is None else own
        remaining = remaining_deadline()
        if remaining is not None:
            if remaining <= 0:
                raise local_error(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline of the incoming call passed before calling {method_name(details)}",
                    "deadline",
                )
            if timeout is None or remaining < timeout:
                timeout = remaining
        if timeout == own:
            return details
        # Positional: the cheapest way to build grpc.aio's ClientCallDetails (a namedtuple).
        return grpc.aio.ClientCallDetails(
            details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
        )

    def unary_details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """A unary-response call's details with its timeout (what `intercept_unary_unary`
        sends on; shared with the mesh's fused client chain, mesh/client/fused.py)."""
        return self._details(details, self._default)

    @returns_call
    async def intercept_unary_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details, self._default), request)

    @returns_call
    async def intercept_unary_stream(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details, self._stream_default), request)

    @returns_call
    async def intercept_stream_unary(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        details = self._details(client_call_details, self._default)
        return await continuation(details, request_iterator)

    @returns_call
    async def intercept_stream_stream(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        details = self._details(client_call_details, self._stream_default)
        return await continuation(details, request_iterator)


class DeadlineServerInterceptor(ObservingServerInterceptor[None, "Token[float | None]"]):
    """Publishes the incoming call's deadline (absolute, monotonic) to the handler's context."""

    def prepare(self, method: str) -> None:
        return None

    def begin(
        self, prepared: None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Token[float | None]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return incoming_deadline.set(deadline)

    def end(
        self, state: Token[float | None], code: grpc.StatusCode, error: BaseException | None
    ) -> None:
        # ValueError: a streaming behaviour finalised from another task (the loop
        # closing an abandoned async generator): nothing of ours to undo there.
        # (try, not contextlib.suppress: no context manager object per call.)
        try:  # noqa: SIM105
            incoming_deadline.reset(state)
        except ValueError:
            pass
