"""`meshctl up`'s stdout, whose reader may leave (`make run | head -20`).

Everything `up` prints goes to stdout: its progress, every child's log line, the table.
When the reader goes away, the next write raises BrokenPipeError in whichever task
printed. Before 7 Dec 2026 that killed a child's watcher task, so the child was no
longer restarted. In `run_up`'s `finally` it skipped the mesh's orderly stop, and the
state files stayed behind.

`LeavableStdout` stands in for stdout while the mesh runs. The first failed write:
- points fd 1 (and fd 2, when it is the same pipe) at /dev/null, so no later write
  raises, the interpreter's last flush included;
- calls `on_gone` once; `up` stops the mesh there, as Ctrl-C does. A shell tool would
  die of SIGPIPE at that point; `up` drains and deregisters first.
`watch_pipe` notices the reader leaving while `up` prints nothing (an idle mesh), for
a stdout that is a pipe: its write end reports an error once the read end is closed.
Without it, `make run | head -20` would hold the terminal until the next log line.
Limit: a reader that stops reading without closing the pipe is not seen; `up` then
blocks on a full pipe, as any program does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import select
import stat
import sys
from collections.abc import Callable
from typing import TextIO


class LeavableStdout(io.TextIOBase):
    """`stream` (up's stdout) for as long as its reader stays, /dev/null after it leaves."""

    def __init__(self, stream: TextIO, on_gone: Callable[[], None]) -> None:
        self._stream = stream
        self._on_gone = on_gone
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_left()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def watch_pipe(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Call `on_gone` as soon as a pipe's reader closes it, printing or not; returns
        what stops watching. Only for a pipe: epoll reports the error of a pipe's write
        end to a reader callback (a terminal would call it whenever a key is pressed)."""
        fd = self.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return lambda: None

        def check() -> None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)) and not self.gone:
                self._reader_left()
            if self.gone:
                _forget(loop, fd)

        loop.add_reader(fd, check)
        return lambda: _forget(loop, fd)

    def _reader_left(self) -> None:
        self.gone = True
        out = self._stream.fileno()
        to_devnull(out, *([2] if _same_file(out, 2) else []))
        with contextlib.suppress(OSError):
            print(
                "meshctl up: the reader of its output left; stopping the mesh",
                file=sys.stderr,
                flush=True,
            )
        self._on_gone()


def to_devnull(*fds: int) -> None:
    """Point `fds` at /dev/null: once their reader has left, writes to them (the
    interpreter's last flush included) no longer fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _forget(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    loop.remove_reader(fd)  # (whether it was still watched does not matter)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
