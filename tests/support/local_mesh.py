"""The real stack for end-to-end and chaos tests, started the way `meshctl up` starts it.

Real nats-server (the test's own, on a free port, so a test can stop it), the services as
real processes on free ports, the embedded registry in a temp dir, and a real Envoy edge
with its meta server and endpoint sync: `mesh.local.up.LocalMesh`, the code behind
`make run`, with its supervisor (restarts included), on free ports instead of the fixed
ones.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from mesh.edge.browsers import NO_CORS, EdgeCors
from mesh.local.observe import ObserveOptions
from mesh.local.supervisor import Child, Supervisor
from mesh.local.topology import ServiceSpec, load_topology
from mesh.local.up import PROCESSES_FILE, LocalMesh, UpError, UpOptions, topology_events
from mesh.settings import Settings
from tests.support.edge import EdgeClient
from tests.support.nats import NatsServer, nats_server
from tests.support.ports import free_port

# Variables of the developer's shell that would point the services elsewhere.
_FOREIGN = ("MESH_", "OTEL_", "CONSUL_", "NATS_")


@dataclass
class Stack:
    mesh: LocalMesh
    supervisor: Supervisor
    registry: EmbeddedRegistry
    nats: NatsServer | None  # the test's own server; None: `up` runs its own (`own_nats`)
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

    def edge_access_lines(
        self, path_suffix: str = "", *, failed: bool = False
    ) -> list[dict[str, Any]]:
        """Envoy's access lines so far (from `base/stack.log`, where the supervisor writes
        every process's output), those whose path ends with `path_suffix` (and, `failed`,
        whose gRPC status is not OK): what a failed call through the edge tried
        (`upstream`, `attempts`) and why it failed (`flags`, `upstream_failure`), for a
        test's failure message."""
        lines = []
        for raw in (self.base / "stack.log").read_text(errors="replace").splitlines():
            name, sep, rest = raw.partition("| ")
            if sep and name.strip() == "envoy" and rest.startswith("{"):
                try:
                    line = json.loads(rest)
                except ValueError:
                    continue
                if str(line.get("path", "")).endswith(path_suffix) and (
                    not failed or str(line.get("grpc_status")) != "0"
                ):
                    lines.append(line)
        return lines

    async def start_instance(self, service: str, name: str) -> Child:
        """One more instance of `service`, as `meshctl up` starts extra instances."""
        template = next(c for c in self.supervisor.children if c.spec.service == service)
        env = {**template.spec.env, "MESH_INSTANCE_ID": name}
        env["MESH_GRPC_PORT"] = env["MESH_ADMIN_PORT"] = "0"
        spec = replace(template.spec, name=name, env=env)
        return await self.supervisor.start(spec)


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_FOREIGN) and not k.endswith("_DATABASE_URL")
    }


TOPOLOGY = Path(__file__).resolve().parents[2] / "mesh.toml"
# The page origin the e2e stacks' edge lets browsers call it from (`[edge.cors]`).
E2E_PAGE_ORIGIN = "http://shop.test:8765"
_TEST_EDGE_LIMITS = {
    "MESH_EDGE_STRICT_RATE_LIMIT_PER_MIN": "600",
    "MESH_EDGE_CLIENT_RATE_LIMIT_PER_S": "1000000",
}


def free_port_shop() -> tuple[ServiceSpec, ...]:
    """The project's topology (mesh.toml) with every port left to the kernel."""
    return tuple(replace(s, grpc_port=0, admin_port=0) for s in load_topology(TOPOLOGY).services)


@asynccontextmanager
async def local_mesh(
    base: Path,
    services: tuple[ServiceSpec, ...] | None = None,
    *,
    env: dict[str, str] | None = None,
    edge_port: int = 0,
    nats: NatsServer | None = None,
    own_nats: bool = False,
    warm_spares: bool = True,
    python: str | None = None,
    source: Path | None = None,
    edge_cors: EdgeCors = NO_CORS,
) -> AsyncIterator[Stack]:
    """`LocalMesh` started and ready (the whole shop on free ports by default), stopped
    on exit; the supervisor's log goes to `base/stack.log` (its tail is in a start error).
    NATS: the test's own nats-server (`nats`, or one started here), which a test may stop;
    `own_nats`: the authenticated one `up` starts and supervises, as `make run` does."""
    await asyncio.to_thread(base.mkdir, parents=True, exist_ok=True)
    async with _nats(base, nats, own_nats) as server:
        registry = EmbeddedRegistry(base / "registry")
        log = (base / "stack.log").open("a")
        # Its state file where `meshctl up` writes it: `meshctl status --run-dir base` reads
        # this stack as it reads `make run`'s.
        supervisor = Supervisor(out=log, colour=False, state_file=base / PROCESSES_FILE)
        options = UpOptions(
            run_dir=base,
            edge_port=edge_port or free_port(),
            edge_tls_port=free_port(),
            # `up`'s own: on a free port, configured from the topology as `meshctl up` does.
            nats_url=server.url if server is not None else f"nats://127.0.0.1:{free_port()}",
            nats_external=server is not None,
            observe=ObserveOptions(trace_sink_port=0, dashboard_port=0),
            services=services or free_port_shop(),
            project_dir=TOPOLOGY.parent,
            ready_timeout_s=60,
            grace_s=10,
            # Test stacks (and `bench orders`) sign up, log in and load the edge from one
            # address (127.0.0.1): the edge's per-client limits (20 logins a minute, 1,000
            # requests a second) are lifted here and tested on an edge of their own
            # (tests/integration/edge/test_edge_hardening.py).
            env={**clean_env(), **_TEST_EDGE_LIMITS, **(env or {})},
            warm_spares=warm_spares,
            edge_cors=edge_cors,
        )
        if server is None:
            identities, streams = topology_events(
                load_topology(TOPOLOGY), Settings(service="meshctl")
            )
            options = replace(options, event_identities=identities, streams=streams)
        if python is not None:  # the services and the trace sink on another interpreter
            options = replace(options, python=python)
        if source is not None:  # ... or from another source tree
            options = replace(options, source=source)
        mesh = LocalMesh(options, registry, supervisor)
        try:
            mesh.preflight()
            await mesh.start()
            try:
                instances = await mesh.wait_ready()
            except UpError as exc:
                log.flush()
                raise RuntimeError(f"{exc}\n{(base / 'stack.log').read_text()[-6000:]}") from exc
            yield Stack(
                mesh, supervisor, registry, server, EdgeClient(options.edge_port), instances, base
            )
        finally:
            await mesh.stop()
            await registry.close()
            log.close()


@asynccontextmanager
async def _nats(
    base: Path, given: NatsServer | None, own: bool
) -> AsyncIterator[NatsServer | None]:
    if own:
        yield None
        return
    if given is not None:
        yield given
        return
    async with nats_server(base / "nats") as server:
        yield server
