"""A real nats-server with JetStream for tests: free port, temp store, stop and restart.

`NatsServer` starts `nats-server -js` on a port the kernel picks (read back from
the ports file) and restarts on that same port and store directory, so clients
reconnect to it and JetStream's file storage (streams, durable consumers)
survives, as in a production restart. `nats_server()` is an async context
manager that always stops the process; tests/integration/events/conftest.py
wraps it in a fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from mesh.tools import nats_server_binary


class NatsServer:
    """One nats-server process; `port` stays fixed across `restart()`."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.store_dir = base_dir / "store"
        self.ports_dir = base_dir / "ports"
        self.log_file = base_dir / "nats.log"
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, ready_within_s: float = 10.0) -> None:
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.ports_dir, ignore_errors=True)
        self.ports_dir.mkdir(parents=True)
        port = str(self.port) if self.port else "-1"
        cmd = [nats_server_binary(), "-a", "127.0.0.1", "-p", port, "-js",
               "-sd", str(self.store_dir), "--ports_file_dir", str(self.ports_dir)]  # fmt: skip
        with self.log_file.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline:  # poll: the ports file appears once it listens
            if self._proc.returncode is not None:
                raise RuntimeError(f"nats-server exited: {self.log_file.read_text()[-2000:]}")
            port_no = self._read_port()
            if port_no and _can_connect(port_no):
                self.port = port_no
                return
            await asyncio.sleep(0.02)
        await self.stop()
        raise TimeoutError(f"nats-server did not start within {ready_within_s}s")

    def _read_port(self) -> int:
        for f in self.ports_dir.glob("*.ports"):
            with contextlib.suppress(ValueError, KeyError, IndexError):
                url = json.loads(f.read_text())["nats"][0]
                return int(url.rsplit(":", 1)[1])
        return 0

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (JetStream flushes its store), SIGKILL after `grace_s`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def kill(self) -> None:
        """SIGKILL, like a crash."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def nats_server(base_dir: Path | None = None) -> AsyncIterator[NatsServer]:
    """A started server in `base_dir` (a fresh temp dir by default), always stopped."""
    owned = base_dir is None
    path = Path(tempfile.mkdtemp(prefix="nats-")) if base_dir is None else base_dir
    server = NatsServer(path)
    try:
        await server.start()
        yield server
    finally:
        try:
            await server.stop()
        finally:
            await server.kill()
            if owned:
                shutil.rmtree(path, ignore_errors=True)
