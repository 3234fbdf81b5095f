"""Fixtures: real ping servers on loopback (in-process or in a child process), a
registry to put them in, and mesh channels closed after each test."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mesh.client.channel import MeshChannel
from mesh.client.connect import ClientOptions, open_channel
from mesh.discovery.registry import Registry
from mesh.discovery.static import StaticRegistry
from tests.support import pki
from tests.support.mesh_client import SERVICE
from tests.support.ping import PingServer, start_ping_server

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class ChildServer:
    """A ping server in its own process: SIGKILL makes a real crash."""

    name: str
    port: int
    process: subprocess.Popen[str]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


_CHILD = """
import asyncio, sys
from tests.support.ping import start_ping_server
from tests.support.pki import identity

async def main():
    server = await start_ping_server(sys.argv[1], identity=identity("ping"))
    print(server.port, flush=True)
    await server.server.wait_for_termination()

asyncio.run(main())
"""


@pytest.fixture
def registry() -> StaticRegistry:
    return StaticRegistry()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[PingServer]]]:
    """servers(name, interceptors=()) → a running in-process ping server."""
    started: list[PingServer] = []

    async def start(name: str, interceptors: Sequence[Any] = ()) -> PingServer:
        server = await start_ping_server(
            name, interceptors=list(interceptors), identity=pki.identity(SERVICE)
        )
        started.append(server)
        return server

    yield start
    await asyncio.gather(*(s.stop(None) for s in started))


@pytest.fixture
def child_servers() -> Any:
    """child_servers(name) → a ping server in a child process (killed after the test)."""
    started: list[ChildServer] = []

    def start(name: str) -> ChildServer:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}"}
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, name],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        child = ChildServer(name, port, proc)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()


@pytest.fixture
async def channels() -> AsyncIterator[Callable[..., MeshChannel]]:
    """channels(registry, interceptors=(), **options) → a MeshChannel closed after the test."""
    opened: list[MeshChannel] = []

    def open_(registry: Registry, interceptors: Sequence[Any] = (), **options: Any) -> MeshChannel:
        options.setdefault("outlier_base_ejection_s", 0.3)
        options.setdefault("outlier_consecutive_failures", 3)
        options.setdefault("identity", pki.identity("caller"))
        ch = open_channel(SERVICE, registry, interceptors, ClientOptions(**options))
        opened.append(ch)
        return ch

    yield open_
    await asyncio.gather(*(ch.close() for ch in opened))
