"""The real stack for end-to-end tests, started the way `meshctl up` starts it.

Real nats-server (its own, on a free port), the four services as real
processes (two instances of orders and inventory) on free ports, the embedded
registry in a temp dir, and a real Envoy edge with its meta server and
endpoint sync: `mesh.local.up.LocalMesh`, the code behind `make run`, with
free ports instead of the fixed ones. One stack per test module.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.local.supervisor import Supervisor
from mesh.local.topology import load_topology
from mesh.local.up import LocalMesh, UpError, UpOptions
from tests.support.e2e_stack import Stack
from tests.support.edge import EdgeClient
from tests.support.nats import nats_server
from tests.support.ports import free_port

TOPOLOGY = Path(__file__).resolve().parents[2] / "mesh.toml"

# Variables of the developer's shell that would point the services elsewhere.
_FOREIGN = ("MESH_", "OTEL_", "CONSUL_", "NATS_")


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
