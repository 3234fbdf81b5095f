"""`meshctl up` running a project of its own, as the README's "Using the mesh for your
own services" tells a user to: its own `mesh.toml` and modules, not installed, started
with `--topology` from another directory. Two services: `ping` (two instances,
implementing one method of the testing ping service) and `caller`, which calls ping
through the mesh (discovery, mTLS, the chains) every 0.2 s and logs the answer.

What a user sees is asserted: both come up from the project's directory, the calls
succeed, `up` names the services the edge does not route and why, and nothing warns
about the methods ping leaves unimplemented; Ctrl-C stops it all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.nats import nats_server

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.timeout(180)]

PING = """
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.server import ServiceDefinition, run_service


class Ping(ping_pb2_grpc.PingServiceServicer):  # Ping only: the others are grpc's
    async def Ping(self, request, context):
        return ping_pb2.PingResponse(value=request.value, server="own-project")


async def build(settings, runtime):
    return ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, Ping())],
        service_names=["shop.testing.v1.PingService"],
    )


if __name__ == "__main__":
    run_service("ping", build, grpc_port=0, admin_port=0)
"""

CALLER = """
import asyncio, logging

from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.server import ServiceDefinition, run_service

log = logging.getLogger("caller")


async def build(settings, runtime):
    stub = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
    tasks = []

    async def calls():
        while True:
            try:
                reply = await stub.Ping(ping_pb2.PingRequest(value="hi"), timeout=2)
                log.info("ping answered %s from %s", reply.value, reply.server)
            except Exception as exc:
                log.info("ping failed: %s", exc)
            await asyncio.sleep(0.2)  # poll: the pace of the calls

    async def start():
        tasks.append(asyncio.create_task(calls()))

    async def stop():
        tasks[0].cancel()

    return ServiceDefinition(
        name="caller", servicers=[], service_names=[], on_start=[start], on_stop=[stop]
    )


if __name__ == "__main__":
    run_service("caller", build, grpc_port=0, admin_port=0)
"""

TOPOLOGY = """
[services.ping]
module = "pingproj.server"
instances = 2

[services.caller]
module = "callerproj.server"
"""


def _project(root: Path) -> Path:
    for package, code in (("pingproj", PING), ("callerproj", CALLER)):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        (root / package / "server.py").write_text(code)
    (root / "mesh.toml").write_text(TOPOLOGY)
    return root / "mesh.toml"


async def test_a_project_of_its_own_runs_from_its_directory(tmp_path: Path) -> None:
    topology = _project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "NATS_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    async with nats_server(tmp_path / "nats") as server:
        env["NATS_URL"] = server.url  # the project names no NATS identities of its own
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mesh.cli", "--run-dir", str(tmp_path / "run"),
            "up", "--free-ports", "--topology", str(topology),
            cwd=elsewhere, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        lines: list[str] = []

        async def until(text: str, count: int = 1) -> None:
            while sum(text in line for line in lines) < count:
                raw = await proc.stdout.readline()  # type: ignore[union-attr]
                assert raw, f"meshctl up ended before {text!r}:\n" + "\n".join(lines[-40:])
                lines.append(raw.decode().rstrip())

        try:
            async with asyncio.timeout(90):
                await until("mesh is up")
                await until("ping answered hi from own-project", 5)
        finally:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            async with asyncio.timeout(60):
                rest = (await proc.stdout.read()).decode()
                code = await proc.wait()
    text = "\n".join(lines) + rest
    assert code == 0, text[-3000:]
    assert "mesh stopped" in rest
    for name in ("ping-1", "ping-2", "caller-1"):
        assert f"{name} " in text
    for service in ("caller", "ping"):
        assert f"{service} is not routed by the edge: no contract of it in" in text
    assert "payments" not in text  # the shop's, not this project's
    assert "No module named" not in text
    assert "not intercepting" not in text and "NotImplementedError" not in text
