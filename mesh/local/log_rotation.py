"""`meshctl up --detach`'s log (`<run dir>/up.log`), kept to a bounded size.

Why: a detached mesh writes every process's output there, the edge's access line for
each request included (~0.5 KB: under load, hundreds of KB a second), and until 7 Dec
2026 nothing ever cut it: a detached mesh left up under load filled its disk. In the
foreground the same lines go to the terminal.

How: the detached `up` runs with its stdout and stderr on up.log (so what C libraries
print lands there too). Every `check_s` it looks at the file's size; past `max_bytes`
it renames up.log to up.log.1 (up.log.1 to up.log.2 ..., the oldest beyond `backups`
deleted), opens a new up.log (0600, the user's only, as the first one) and points its
stdout and stderr (file descriptors 1 and 2) at it. Every writer, Python's or C's,
follows without knowing; the services' output reaches the file through the
supervisor, which writes to stdout.

Limits: the file can pass `max_bytes` by what `check_s` of output writes; a reader that
opened up.log by name keeps reading the renamed file (`tail -F` follows the name).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024 * 1024
BACKUPS = 3
CHECK_S = 5.0


class LogRotation:
    """Keeps `path`, this process's stdout and stderr, under `max_bytes` (module doc)."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def check(self) -> bool:
        """Rotate when stdout's file has grown past `max_bytes`; whether it did."""
        if os.fstat(1).st_size <= self.max_bytes:
            return False
        sys.stdout.flush()
        sys.stderr.flush()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)
        log.info("%s rotated at %d bytes (keeping %d older files)",
                 self.path, self.max_bytes, self.backups)  # fmt: skip
        return True

    async def run(self, check_s: float = CHECK_S) -> None:
        while True:
            await asyncio.sleep(check_s)  # a size check, not a wait for state
            try:
                self.check()
            except OSError as exc:  # e.g. the run directory removed under us: keep going
                log.warning("cannot rotate %s: %s", self.path, exc)
