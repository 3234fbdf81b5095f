"""Waiting for an effect the test cannot be told about: poll with a deadline.

One helper for every suite (never a bare sleep as synchronisation).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    within_s: float = ...,
    what: str = ...,
    *,
    interval_s: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None],
    within_s: float = ...,
    what: str = ...,
    *,
    interval_s: float = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any], within_s: float = 15.0, what: str = "", *, interval_s: float = 0.02
) -> Any:
    """Call `check` (plain or async) until it returns something truthy, and return it;
    AssertionError naming `what` after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what or check}")
        await asyncio.sleep(interval_s)  # poll
