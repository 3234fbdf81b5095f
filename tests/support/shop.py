"""The whole shop as real processes on loopback, for integration and e2e tests.

`ShopStack` runs users, inventory, payments and orders with
`python -m services.<name>`, each with MESH_GRPC_PORT=0 / MESH_ADMIN_PORT=0, one
embedded registry directory, one data directory (SQLite files) or one fresh
PostgreSQL database per service, and the NATS_URL of a real nats-server
(tests/support/nats.py). Processes are found through the registry
(`EmbeddedRegistry` on the same directory) and are ready when the registry lists
them and their gRPC health answers SERVING.

```python
async with nats_server() as nats, shop_stack(tmp, nats_url=nats.url) as shop:
    orders = shop.orders_v2()                       # a stub on the orders process
    await shop.kill("orders"); await shop.start("orders")   # crash and restart
```

`pg_databases()` makes one PostgreSQL database per service (dropped after) and
skips the test when no PostgreSQL answers on 127.0.0.1:5432.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.inventory.v1 import inventory_pb2_grpc
from shop.orders.v1 import orders_pb2_grpc as orders_v1_grpc
from shop.orders.v2 import orders_pb2_grpc as orders_v2_grpc
from shop.payments.v1 import payments_pb2_grpc
from shop.users.v1 import users_pb2_grpc

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance, RegistryUnavailable
from tests.support.nats import NatsServer
from tests.support.pki import mtls_channel

SERVICES: tuple[str, ...] = ("users", "inventory", "payments", "orders")
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
REPO = Path(__file__).resolve().parents[2]

# Fast enough for tests, still the production code paths.
TEST_ENV: Mapping[str, str] = {
    "USERS_PASSWORD_PROFILE": "cheapest",
    "MESH_DRAIN_GRACE_S": "2",
    "MESH_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
    # Exporting spans to a collector that is not there would only slow things down.
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_SDK_DISABLED": "true",
}


class ShopError(RuntimeError):
    """A service process did not start or become healthy; the message has its log tail."""


@dataclass
class ServiceProcess:
    """One service process. The instance id stays the same across restarts."""

    name: str
    env: dict[str, str]
    log_path: Path
    instance_id: str
    proc: asyncio.subprocess.Process | None = None
    instance: Instance | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        if self.running:
            return
        self.instance = None
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{self.name}",
                env=self.env, cwd=str(REPO), stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    async def terminate(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM (graceful drain), SIGKILL after `grace_s`; the exit status."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    async def kill(self) -> None:
        """SIGKILL: a crash, no drain, no deregistration."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


@dataclass
class ShopStack:
    """The four services over one registry dir, data dir and NATS server."""

    base_dir: Path
    nats_url: str
    database_urls: Mapping[str, str] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    # The server's identities: each service connects as its own (`nats_url` stays the
    # tests' own URL, the administrator's on a server with permissions on).
    nats: NatsServer | None = None
    _channels: dict[str, tuple[str, grpc.aio.Channel]] = field(default_factory=dict)
    _registry: EmbeddedRegistry | None = None

    def __post_init__(self) -> None:
        self.registry_dir = self.base_dir / "registry"
        self.data_dir = self.base_dir / "data"
        self.logs_dir = self.base_dir / "logs"
        for d in (self.registry_dir, self.data_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.registry_dir, 0o700)
        run = uuid.uuid4().hex[:6]
        for name in SERVICES:
            env = {**os.environ, **TEST_ENV}
            env.update(
                {
                    "MESH_REGISTRY": "embedded",
                    "MESH_REGISTRY_DIR": str(self.registry_dir),
                    "MESH_DATA_DIR": str(self.data_dir),
                    "MESH_GRPC_PORT": "0",
                    "MESH_ADMIN_PORT": "0",
                    "MESH_INSTANCE_ID": f"{name}-{run}",
                    "NATS_URL": self.nats_url,
                    "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "generated")]),
                }
            )
            env.pop("CONSUL_HTTP_ADDR", None)
            if self.nats is not None:
                env.update(self.nats.client_env(name))
            url = self.database_urls.get(name)
            if url:
                env[f"{name.upper()}_DATABASE_URL"] = url
            env.update(self.extra_env)
            self.processes[name] = ServiceProcess(
                name, env, self.logs_dir / f"{name}.log", f"{name}-{run}"
            )

    @property
    def registry(self) -> EmbeddedRegistry:
        if self._registry is None:
            self._registry = EmbeddedRegistry(self.registry_dir)
        return self._registry

    def database_url(self, name: str) -> str:
        """The service's database as the test can open it (asyncpg / aiosqlite URL)."""
        url = self.database_urls.get(name)
        return url or f"sqlite+aiosqlite:///{self.data_dir / f'{name}.db'}"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *names: str, within_s: float = 60.0) -> None:
        """Start the services (all by default) and wait until each is healthy."""
        chosen = names or SERVICES
        for name in chosen:
            await self.processes[name].spawn()
        await asyncio.gather(*(self.wait_healthy(name, within_s) for name in chosen))

    async def wait_healthy(self, name: str, within_s: float = 60.0) -> Instance:
        """Poll the registry until this process's instance is listed and SERVING."""
        p = self.processes[name]
        deadline = time.monotonic() + within_s
        while True:  # poll with a deadline
            if not p.running:
                raise ShopError(f"{name} exited ({p.proc and p.proc.returncode}):\n{p.log_tail()}")
            with contextlib.suppress(RegistryUnavailable):
                for inst in await self.registry.healthy(name):
                    if inst.id == p.instance_id and await _serving(inst.address, name):
                        p.instance = inst
                        return inst
            if time.monotonic() > deadline:
                raise ShopError(f"{name} not healthy within {within_s}s:\n{p.log_tail()}")
            await asyncio.sleep(0.05)  # poll: until healthy, with the deadline above

    async def stop(self, name: str, grace_s: float = 10.0) -> int | None:
        """Graceful stop (SIGTERM); returns the exit status. Calls in flight on the test's
        channel end as the process decides (the channel is replaced on restart)."""
        return await self.processes[name].terminate(grace_s)

    async def kill(self, name: str) -> None:
        """kill -9: calls in flight on the test's channel fail UNAVAILABLE."""
        await self.processes[name].kill()

    async def close(self) -> None:
        for name in list(self._channels):
            await self._drop_channel(name)
        # Orders first: it calls the others while draining.
        for name in reversed(SERVICES):
            await self.processes[name].terminate(grace_s=5.0)
        if self._registry is not None:
            await self._registry.close()

    # -- clients -----------------------------------------------------------------------------

    def address(self, name: str) -> str:
        inst = self.processes[name].instance
        if inst is None:
            raise ShopError(f"{name} is not running")
        return inst.address

    def channel(self, name: str) -> grpc.aio.Channel:
        """A direct channel to the service's current process (re-made after a restart)."""
        address = self.address(name)
        cached = self._channels.get(name)
        if cached is not None and cached[0] == address:
            return cached[1]
        if cached is not None:
            # The process moved (restart): calls on the old channel have ended by now.
            asyncio.get_running_loop().create_task(cached[1].close(None))
        ch = mtls_channel(address, name, options=[("grpc.use_local_subchannel_pool", 1)])
        self._channels[name] = (address, ch)
        return ch

    async def _drop_channel(self, name: str) -> None:
        cached = self._channels.pop(name, None)
        if cached is not None:
            await cached[1].close(None)

    def users(self) -> users_pb2_grpc.UserServiceAsyncStub:
        return users_pb2_grpc.UserServiceStub(self.channel("users"))  # type: ignore[return-value]

    def inventory(self) -> inventory_pb2_grpc.InventoryServiceAsyncStub:
        return inventory_pb2_grpc.InventoryServiceStub(self.channel("inventory"))  # type: ignore[return-value]

    def reservations(self) -> inventory_pb2_grpc.ReservationServiceAsyncStub:
        return inventory_pb2_grpc.ReservationServiceStub(self.channel("inventory"))  # type: ignore[return-value]

    def payments(self) -> payments_pb2_grpc.PaymentServiceAsyncStub:
        return payments_pb2_grpc.PaymentServiceStub(self.channel("payments"))  # type: ignore[return-value]

    def orders_v1(self) -> orders_v1_grpc.OrderServiceAsyncStub:
        return orders_v1_grpc.OrderServiceStub(self.channel("orders"))  # type: ignore[return-value]

    def orders_v2(self) -> orders_v2_grpc.OrderServiceAsyncStub:
        return orders_v2_grpc.OrderServiceStub(self.channel("orders"))  # type: ignore[return-value]


async def _serving(address: str, service: str) -> bool:
    async with mtls_channel(address, service) as ch:
        try:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.asynccontextmanager
async def shop_stack(
    base_dir: Path,
    *,
    nats_url: str,
    database_urls: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    services: Sequence[str] = SERVICES,
    keep_logs_on_error: bool = True,
    nats: NatsServer | None = None,
) -> AsyncIterator[ShopStack]:
    """A started stack, always stopped; on an error the services' log tails are printed.

    With `nats`, each service gets its own identity on that server (`nats_url` is then
    the URL the tests use themselves)."""
    stack = ShopStack(
        base_dir, nats_url, dict(database_urls or {}), dict(extra_env or {}), nats=nats
    )
    try:
        await stack.start(*services)
        yield stack
    except BaseException:
        if keep_logs_on_error:
            for p in stack.processes.values():
                print(f"---- {p.name} log tail ----\n{p.log_tail(60)}", file=sys.stderr)
        raise
    finally:
        await stack.close()


# -- PostgreSQL ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pg_databases(services: Sequence[str] = SERVICES) -> AsyncIterator[dict[str, str]]:
    """One fresh database per service ({service: asyncpg URL}), dropped afterwards."""
    import asyncpg

    run = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
    names = {s: f"shop_{s}_{run}" for s in services}
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for db in names.values():
            await conn.execute(f'CREATE DATABASE "{db}"')
        yield {s: f"{PG_SERVER}/{db}" for s, db in names.items()}
    finally:
        for db in names.values():
            with contextlib.suppress(Exception):
                await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def extra(env: Mapping[str, Any]) -> dict[str, str]:
    """Env values as strings (numbers welcome)."""
    return {k: str(v) for k, v in env.items()}
