"""A real nats-server with JetStream for tests: free port, temp store, stop and restart.

`NatsServer` starts `nats-server -js` on a port the kernel picks (read back from
the ports file) and restarts on that same port and store directory, so clients
reconnect to it and JetStream's file storage (streams, durable consumers)
survives, as in a production restart. `nats_server()` is an async context
manager that always stops the process; tests/integration/events/conftest.py
wraps it in a fixture.

With `auth=True` the server runs the configuration `meshctl up` renders
(mesh/local/nats.py): one nkey per shop identity with its permissions, no
anonymous access, plus a test administrator with every right (user/password,
carried by `admin_url`, for the tests' own inspection). `client_env(identity)` is
what a service process of that identity gets; `auth_for(identity)` the same for an
in-process client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from mesh.events.nats_connect import NatsClientAuth
from mesh.local.nats import LocalNats, prepare_local_nats
from mesh.tools import nats_server_binary
from services.common.event_identities import IDENTITIES, event_identity
from services.common.event_types import shop_streams

ADMIN = "admin"


class NatsServer:
    """One nats-server process; `port` stays fixed across `restart()`."""

    def __init__(self, base_dir: Path, *, auth: bool = False) -> None:
        self.base_dir = base_dir
        self.store_dir = base_dir / "store"
        self.ports_dir = base_dir / "ports"
        self.log_file = base_dir / "nats.log"
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self.local: LocalNats | None = None
        self._admin_password = secrets.token_urlsafe(18)
        if auth:
            entry = f'{{ user: "{ADMIN}", password: "{self._admin_password}" }}  # tests only'
            self.local = prepare_local_nats(
                base_dir / "identities",
                preferred_port=0,
                identities=IDENTITIES,
                streams=shop_streams(),
                extra_users=[entry],
                store_dir=self.store_dir,
            )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The URL with the test administrator's credentials (every right), or `url`."""
        if self.local is None:
            return self.url
        return f"nats://{ADMIN}:{self._admin_password}@127.0.0.1:{self.port}"

    def client_env(self, identity: str) -> dict[str, str]:
        """NATS_URL (and seed file) of a process of `identity`, as `meshctl up` sets them."""
        if self.local is None:
            return {"NATS_URL": self.url}
        return {"NATS_URL": self.url, "NATS_NKEY_SEED_FILE": str(self.local.seeds[identity])}

    def auth_for(self, identity: str) -> NatsClientAuth:
        """In-process credentials of `identity` (with its private inbox prefix)."""
        if self.local is None:
            return NatsClientAuth()
        assert event_identity(identity) is not None, identity
        return self.local.client_auth(identity)

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
        # The rendered config names the store; flags override its listen address.
        if self.local is not None:
            config = ["-c", str(self.local.config)]
        else:
            config = ["-js", "-sd", str(self.store_dir)]
        cmd = [nats_server_binary(), *config, "-a", "127.0.0.1", "-p", port,
               "--ports_file_dir", str(self.ports_dir)]  # fmt: skip
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
            await asyncio.sleep(0.02)  # poll: see the loop's deadline
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
async def nats_server(
    base_dir: Path | None = None, *, auth: bool = False
) -> AsyncIterator[NatsServer]:
    """A started server in `base_dir` (a fresh temp dir by default), always stopped."""
    owned = base_dir is None
    path = Path(tempfile.mkdtemp(prefix="nats-")) if base_dir is None else base_dir
    path.mkdir(parents=True, exist_ok=True)
    server = NatsServer(path, auth=auth)
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
