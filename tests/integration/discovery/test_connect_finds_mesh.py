"""`mesh.connect` in another process, given no settings, finds the mesh `meshctl up`
recorded (mesh.discovery.locate), and says where it looked when nothing is there.

The service is the ping service as a real process registering in its own
registry directory; the record is written as `meshctl up` writes it (with this
test's pid as the live owner); the client is a fresh `python -c` whose
environment has no MESH_REGISTRY_DIR, only its own XDG_STATE_HOME/XDG_RUNTIME_DIR
so that it reads this test's record and never the machine user's.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.discovery import locate
from mesh.discovery.embedded import EmbeddedRegistry
from tests.support.pki import session_pki
from tests.support.poll import eventually

ROOT = Path(__file__).resolve().parents[3]

CLIENT = """
import asyncio
import mesh
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

async def main():
    stub = await mesh.connect("ping", ping_pb2_grpc.PingServiceStub)
    reply = await stub.Ping(ping_pb2.PingRequest(value="found"), timeout=3)
    print(reply.value, reply.server)
    await mesh.close_default_runtime()

asyncio.run(main())
"""


def user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "CONSUL_"))}
    env.update(
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_RUNTIME_DIR=str(tmp_path / "runtime"),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        MESH_PKI_DIR=session_pki().pki_dir,  # the mesh's CA (`meshctl up` records its own)
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "generated")]),
    )
    return env


async def run_client(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.fixture
async def ping_mesh(tmp_path: Path) -> AsyncIterator[Path]:
    """A ping service process registered in tmp_path/run/registry; yields that directory."""
    registry_dir = tmp_path / "run" / "registry"
    env = {**user_env(tmp_path), "MESH_REGISTRY_DIR": str(registry_dir),
           "MESH_INSTANCE_ID": "ping-1", "MESH_REGISTRY": "embedded"}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.ping_service", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    registry = EmbeddedRegistry(registry_dir, health_check=False)
    try:
        await eventually(lambda: registry.healthy("ping"), within_s=20, what="ping registered")
        yield registry_dir
    finally:
        await registry.close()
        proc.terminate()
        await proc.wait()


async def test_connect_with_no_settings_finds_the_recorded_mesh(
    tmp_path: Path, ping_mesh: Path
) -> None:
    env = user_env(tmp_path)
    # What `meshctl up` does (this test's pid is the owner): the registry and the PKI.
    locate.record(ping_mesh, pki_dir=Path(session_pki().pki_dir), env=env)
    client_env = {k: v for k, v in env.items() if k != "MESH_PKI_DIR"}  # no settings at all
    code, out = await run_client(client_env)
    assert code == 0, out
    assert out.split()[:2] == ["found", "ping-1"], out


async def test_nothing_registered_names_where_it_looked(tmp_path: Path, ping_mesh: Path) -> None:
    env = {**user_env(tmp_path), "MESH_DEFAULT_DEADLINE_S": "1"}  # no record: the default dir
    code, out = await run_client(env)
    assert code != 0
    assert "no healthy instance of ping" in out, out
    assert str(tmp_path / "runtime" / f"shop-mesh-{os.getuid()}") in out, out
    assert str(tmp_path / "state" / "shop-mesh" / "current.json") in out, out
