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


def being_cancelled() -> bool:
    """Whether the running task is being cancelled (`Task.cancelling`). Only then is a
    CancelledError its own stop: one out of something it awaited (a future another task
    cancelled, a grpc.aio call on a channel closed under it) is that thing's failure.
    Limit: a cancel the task took back (`uncancel`) no longer counts."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
