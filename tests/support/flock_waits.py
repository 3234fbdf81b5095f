"""The file-lock waits scenario of tests/unit/test_sqlite_writes.py, run in a process of
its own: `python -m tests.support.flock_waits DIR` exits 0 when every check passed.

Why a process of its own: the checks count this process's waiter threads and hand a
lock from fd to fd by number. In a pytest-xdist worker that had run hundreds of tests,
the scenario failed twice in seven CI runs on 7 Dec 2026 in ways the module cannot
produce alone (a 50 ms wait got the lock while another fd held it; a lock released
never reached the next waiter), and never in 25 runs on its own under a CPU burner:
something else in that worker (suspected: a leftover thread closing an fd number late,
after the kernel had reused it for this scenario) moved locks under it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.sqlite_writes import file_lock_waits, take_file_lock


async def _poll(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)  # poll


def _lock_threads() -> int:
    return sum(t.name == "sqlite-write-lock" for t in threading.enumerate())


async def scenario(path: str) -> None:
    """The other process (here: another fd) holds the lock; each wait blocks a thread in
    flock until it is released. Twenty waits one after another run on one thread, not
    twenty; three at once get three; a wait that gave up closes its fd when it gets the
    lock, so the lock is free again afterwards."""
    loop = asyncio.get_running_loop()
    blocking_flock_threads: set[int] = set()
    real_flock = fcntl.flock

    def flock(fd: Any, operation: int) -> None:
        if not operation & fcntl.LOCK_NB:
            blocking_flock_threads.add(threading.get_native_id())  # kernel ids: never reused
        real_flock(fd, operation)

    fcntl.flock = flock  # this process only

    async def contended_wait() -> None:
        holder = await take_file_lock(path, loop.time() + 5)
        assert holder is not None
        waiter = asyncio.create_task(take_file_lock(path, loop.time() + 5))
        await _poll(lambda: file_lock_waits() > 0)
        os.close(holder)
        fd = await asyncio.wait_for(waiter, 5)
        assert fd is not None
        os.close(fd)

    for _ in range(20):
        await contended_wait()
    assert len(blocking_flock_threads) == 1, blocking_flock_threads
    await _poll(lambda: file_lock_waits() == 0)

    holder = await take_file_lock(path, loop.time() + 5)
    assert holder is not None
    # Deadlines far beyond the scenario's own waits: under CI's load the three
    # hand-overs after the polls below took longer than 5 s once.
    waiters = [asyncio.create_task(take_file_lock(path, loop.time() + 60)) for _ in range(3)]
    await _poll(lambda: file_lock_waits() == 3)
    assert _lock_threads() >= 3  # one blocked thread per wait
    gave_up = await take_file_lock(path, loop.time() + 0.05)
    assert gave_up is None  # the deadline passed while the lock was held
    os.close(holder)
    for task in waiters:  # each gets the lock in turn (the kernel wakes one at a time)
        fd = await asyncio.wait_for(task, 60)
        assert fd is not None
        os.close(fd)
    await _poll(lambda: file_lock_waits() == 0)  # the gave-up wait took it and closed it
    free = await take_file_lock(path, loop.time())  # free at once: nobody holds it
    assert free is not None
    os.close(free)


if __name__ == "__main__":
    asyncio.run(scenario(str(Path(sys.argv[1]) / "w.write-lock")))
