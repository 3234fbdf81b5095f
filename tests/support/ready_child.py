"""A test-support module run as a process of its own, up once it prints `READY <port>`.

    async with ready_child("tests.support.health_server", "--service", "s", ...) as (proc, port):
        ...  # proc.kill() for a crash; leaving the block kills it if it still runs

The child gets the repository and `generated/` on PYTHONPATH and inherits the rest of
the environment (MESH_PKI_DIR: the test run's CA). Its stdin is a pipe, for children that
serve until it closes (tests/support/health_server.py, slow_upstream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def ready_child(
    module: str, *args: str, timeout_s: float = 30.0
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`python -m module *args`, once it printed `READY <port>`: (the process, the port)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        assert line.startswith(b"READY "), f"{module} did not start: {line!r}"
        yield proc, int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
