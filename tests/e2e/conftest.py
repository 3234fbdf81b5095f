"""The real stack for end-to-end tests, started the way `meshctl up` starts it.

Real nats-server (its own, on a free port), the four services as real
processes (two instances of orders and inventory) on free ports, the embedded
registry in a temp dir, and a real Envoy edge with its meta server and
endpoint sync: `mesh.local.up.LocalMesh`, the code behind `make run`, with
free ports instead of the fixed ones. One stack per test module.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import pytest_asyncio

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from mesh.local.supervisor import Child, Supervisor
from mesh.local.topology import ProcessSpec, load_topology
from mesh.local.up import LocalMesh, UpError, UpOptions
from tests.support.edge import EdgeClient
from tests.support.nats import NatsServer, nats_server
from tests.support.ports import free_port

TOPOLOGY = Path(__file__).resolve().parents[2] / "mesh.toml"

# Variables of the developer's shell that would point the services elsewhere.
_FOREIGN = ("MESH_", "OTEL_", "CONSUL_", "NATS_")


@dataclass
class Stack:
    mesh: LocalMesh
    supervisor: Supervisor
    registry: EmbeddedRegistry
    nats: NatsServer
    edge: EdgeClient
    instances: dict[str, list[Instance]]
    base: Path

    # The edge's meta server runs in this event loop (as in `meshctl up`): edge
    # calls are blocking subprocesses/HTTP, so they run in a thread.
    async def call(self, method: str, request: Any, *headers: str) -> CompletedProcess[str]:
        return await asyncio.to_thread(self.edge.call, method, request, *headers)

    async def grpcurl(self, *args: str) -> CompletedProcess[str]:
        return await asyncio.to_thread(self.edge.grpcurl, *args)

    async def json(
        self, method: str, path: str, doc: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        return await asyncio.to_thread(self.edge.json, method, path, doc, headers)

    async def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        return await asyncio.to_thread(self.edge.http, method, path, body)

    def child(self, name: str) -> Child:
        return next(c for c in self.supervisor.children if c.spec.name == name)

    async def start_instance(self, service: str, name: str) -> Child:
        """One more instance of `service`, as `meshctl up` starts extra instances."""
        template = next(c for c in self.supervisor.children if c.spec.service == service)
        env = {**template.spec.env, "MESH_INSTANCE_ID": name}
        env["MESH_GRPC_PORT"] = env["MESH_ADMIN_PORT"] = "0"
        spec = ProcessSpec(name=name, argv=template.spec.argv, env=env, service=service)
        return await self.supervisor.start(spec)


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_FOREIGN) and not k.endswith("_DATABASE_URL")
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    async with nats_server(base / "nats") as nats:
        registry = EmbeddedRegistry(base / "registry")
        log = (base / "stack.log").open("w")
        supervisor = Supervisor(out=log, colour=False)
        options = UpOptions(
            run_dir=base,
            edge_port=free_port(),
            edge_admin_port=free_port(),
            edge_tls_port=free_port(),
            nats_url=nats.url,
            services=tuple(
                replace(s, grpc_port=0, admin_port=0) for s in load_topology(TOPOLOGY).services
            ),
            ready_timeout_s=60,
            grace_s=10,
            env=_clean_env(),
        )
        mesh = LocalMesh(options, registry, supervisor)
        try:
            await mesh.start()
            try:
                instances = await mesh.wait_ready()
            except UpError as exc:
                log.flush()
                raise RuntimeError(f"{exc}\n{(base / 'stack.log').read_text()[-6000:]}") from exc
            yield Stack(
                mesh, supervisor, registry, nats, EdgeClient(options.edge_port), instances, base
            )
        finally:
            await mesh.stop()
            await registry.close()
            log.close()
