"""Stopping a background task: the one way the mesh's loops are stopped.

`cancel_and_wait(task)` cancels it and waits until it has stopped, so nothing of it
runs after its owner's `stop()`/`close()` returns; the task's own CancelledError is
the expected end and is not re-raised (any other exception it ends with is).
Users: the certificate renewers (`mesh.security`), the health monitor, the event
service's connection and inbox purge loops.

A module of its own: importing it pulls in neither gRPC, NATS nor a database.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (None: nothing to do) and wait for it to stop."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
