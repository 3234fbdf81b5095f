"""Outage logging, retry backoff and close-aware waiting shared by the backends."""

from __future__ import annotations

import asyncio
import logging

import pytest

from base.backoff import Backoff
from mesh.discovery.lifecycle import Availability, Closed, Closer


def test_availability_logs_each_transition_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.discovery.availability")
    caplog.set_level(logging.INFO, logger=log.name)
    a = Availability("registry X", log)
    a.ok()  # healthy from the start: nothing to say
    for _ in range(5):
        a.failed(ConnectionRefusedError("refused"))
    assert a.down
    for _ in range(3):
        a.ok()
    a.failed(OSError())
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "registry X unreachable (refused); keeping the last known instances and retrying",
        "registry X reachable again",
        "registry X unreachable (OSError); keeping the last known instances and retrying",
    ]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO, logging.WARNING]


def test_backoff_grows_to_its_cap_and_resets() -> None:
    b = Backoff(0.1, 1.0)
    delays = [b.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= d <= 1.0 for d in delays[5:])  # capped at max_s (jitter: half to full)
    b.reset()
    assert b.next() <= 0.1


async def test_closer_sleep_and_run_end_on_close() -> None:
    closer = Closer()
    await closer.sleep(0.01)  # not closed: just sleeps
    assert await closer.run(asyncio.sleep(0, result=42)) == 42  # poll: a coroutine, no wait

    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiting = asyncio.create_task(closer.run(forever()))
    sleeping = asyncio.create_task(closer.sleep(60))
    await started.wait()
    closer.close()
    with pytest.raises(Closed):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(Closed):
        await asyncio.wait_for(sleeping, 1)
    assert cancelled.is_set()  # the abandoned request was cancelled, not leaked
    with pytest.raises(Closed):
        await closer.sleep(0)


async def test_closer_run_passes_errors_through() -> None:
    async def boom() -> None:
        raise ValueError("bad answer")

    with pytest.raises(ValueError, match="bad answer"):
        await Closer().run(boom())


async def test_a_cancelled_sleep_is_cancelled_and_leaves_nothing_behind() -> None:
    closer = Closer()
    sleeping = asyncio.create_task(closer.sleep(60))
    await asyncio.sleep(0)  # poll: let it start sleeping
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    assert not closer._sleepers  # its timer and future are gone
    closer.close()  # nobody left to wake
    with pytest.raises(Closed):
        await closer.sleep(60)
