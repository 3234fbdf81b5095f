"""Per-call context shared by the server and client sides, in contextvars.

A server interceptor sets these for the handler's task; the client
interceptors of calls the handler makes read them (grpc.aio runs each client
call's interceptors in a task that copies the caller's context).
"""

from __future__ import annotations

import time
from contextvars import ContextVar

# Absolute time.monotonic() deadline of the server call being handled, or None
# when the caller set no deadline (or when not inside a server call).
incoming_deadline: ContextVar[float | None] = ContextVar(
    "shop_mesh_incoming_deadline", default=None
)


def remaining_deadline() -> float | None:
    """Seconds left before the incoming call's deadline (<= 0 when passed), or None."""
    deadline = incoming_deadline.get()
    return None if deadline is None else deadline - time.monotonic()
