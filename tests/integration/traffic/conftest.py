"""A fleet of real ping instances on two tracks, registered in a real embedded registry,
each with its own MeshRuntime (as separate processes would be), and a client runtime.

Everything speaks mTLS (the session PKI) over loopback; the traffic policies live in
the file store beside the registry, which every runtime watches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mesh.client.runtime import MeshRuntime
from mesh.server import RunningService, start_service
from mesh.settings import Settings
from mesh.traffic.file_store import FilePolicyStore
from tests.support.bootstrap import ping_definition
from tests.support.ping import PingServicer
from tests.support.pki import session_pki


@dataclasses.dataclass
class Member:
    service: RunningService
    runtime: MeshRuntime
    servicer: PingServicer


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    d = tmp_path / "registry"
    d.mkdir(mode=0o700)
    return d


def mesh_settings(service: str, registry_dir: Path, **env: str) -> Settings:
    base = {
        "MESH_REGISTRY": "embedded",
        "MESH_REGISTRY_DIR": str(registry_dir),
        "MESH_DEFAULT_DEADLINE_S": "5",
        **env,
    }
    return dataclasses.replace(Settings.from_env(service, base), security=session_pki())


@pytest.fixture
async def fleet(registry_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Member]]]:
    """fleet(track) → one more running ping instance of that track."""
    members: list[Member] = []

    async def start(track: str, **env: str) -> Member:
        settings = mesh_settings(
            "ping",
            registry_dir,
            MESH_TRACK=track,
            MESH_VERSION="1.0",
            MESH_INSTANCE_ID=f"ping-{track}-{len(members)}",
            **env,
        )
        runtime = await MeshRuntime.create(settings)
        servicer = PingServicer(track)
        svc = await start_service(ping_definition(servicer), settings, runtime)
        member = Member(svc, runtime, servicer)
        members.append(member)
        return member

    yield start
    for m in members:
        await m.service.stop(0)
        await m.runtime.close()


@pytest.fixture
async def client(registry_dir: Path) -> AsyncIterator[MeshRuntime]:
    runtime = await MeshRuntime.create(mesh_settings("caller", registry_dir))
    yield runtime
    await runtime.close()


@pytest.fixture
async def store(registry_dir: Path) -> AsyncIterator[FilePolicyStore]:
    s = FilePolicyStore(registry_dir)
    yield s
    await s.close()
