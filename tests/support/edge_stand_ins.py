"""A real Envoy edge in front of stand-in upstreams, for the edge's integration tests.

Why here: the routing and end-user-auth tests (tests/integration/edge) start the
edge the same way, as `meshctl up` does — the rendered config, the EDS sync from a
registry, the reflection/health server (EdgeMeta) — and a test module never imports
another. What differs (the upstreams' servicers, the instances, the auth options)
stays in each test.

Limits: `FixedRegistry` only serves what it was given (a watch yields one snapshot
and then waits for `close()`); it is not a Registry to test discovery with
(tests/support/stand_ins.py's MemoryRegistry follows changes). `running_edge` stops
Envoy, the sync and EdgeMeta; the registry and the upstreams are the caller's to
stop. Every port is a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.inventory.v1 import inventory_pb2_grpc
from shop.payments.v1 import payments_pb2_grpc
from shop.users.v1 import users_pb2_grpc

from mesh.discovery.registry import Instance
from mesh.edge.jwt_authn import jwks_sources
from mesh.edge.meta import EdgeMeta
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import EndpointSync
from tests.support import pki
from tests.support.envoy import EnvoyProcess, start_envoy
from tests.support.ports import free_port


class FixedRegistry:
    """Fixed instances; enough for the edge (it only watches)."""

    def __init__(self, instances: list[Instance]) -> None:
        self._instances = instances
        self._closed = asyncio.Event()

    async def register(self, instance: Instance) -> None:
        self._instances.append(instance)

    async def deregister(self, instance_id: str) -> None:
        self._instances = [i for i in self._instances if i.id != instance_id]

    async def healthy(self, service: str) -> list[Instance]:
        return [i for i in self._instances if i.service == service]

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        yield await self.healthy(service)
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()


async def start_upstream(
    name: str, register: list[tuple[Any, Any]], index: int = 1
) -> tuple[grpc.aio.Server, Instance]:
    """A SERVING gRPC server with `name`'s mesh certificate and `register`'s
    (add_..._to_server, servicer) pairs; its Instance is `<name>-<index>`."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    for add, servicer in register:
        add(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port("127.0.0.1:0", pki.identity(name).server_credentials())
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, Instance(id=f"{name}-{index}", service=name, host="127.0.0.1", port=port)


async def start_public_upstreams(
    inventory: Any, users: Any, payments: Any
) -> list[tuple[grpc.aio.Server, Instance]]:
    """inventory, users and payments upstreams with these servicers (payments is internal:
    the edge must never reach it), each as `start_upstream` starts one."""
    return [
        await start_upstream(
            "inventory", [(inventory_pb2_grpc.add_InventoryServiceServicer_to_server, inventory)]
        ),
        await start_upstream("users", [(users_pb2_grpc.add_UserServiceServicer_to_server, users)]),
        await start_upstream(
            "payments", [(payments_pb2_grpc.add_PaymentServiceServicer_to_server, payments)]
        ),
    ]


@dataclass(frozen=True)
class RunningEdge:
    envoy: EnvoyProcess
    port: int  # the plaintext listener
    tls_port: int  # the TLS listener (the mesh CA's edge certificate)


@contextlib.asynccontextmanager
async def running_edge(
    tmp_path: Path, registry: FixedRegistry, **options: Any
) -> AsyncIterator[RunningEdge]:
    """Envoy on the rendered config (`local_options` + `options`, e.g. `auth=`), its
    endpoints synced from `registry` (the JWKS cluster too when end-user auth is on)."""
    fds = load_descriptor_set(DESCRIPTORS)
    model = build_model(fds.file)
    async with contextlib.AsyncExitStack() as stack:
        meta = EdgeMeta(fds, model, registry)
        await meta.start()
        stack.push_async_callback(meta.stop)
        listen, tls_port = free_port(), free_port()
        rendered = local_options(
            tmp_path,
            listen_port=listen,
            meta_port=meta.port,
            **pki.edge_options(tls_listen_port=tls_port),
            **options,
        )
        config, _ = render_files(tmp_path, rendered)
        sync = EndpointSync(
            registry,
            model.clusters,
            Path(rendered.eds_dir),
            port_clusters=jwks_sources(rendered.auth),
        )
        await sync.start()
        stack.push_async_callback(sync.stop)
        envoy = await asyncio.to_thread(
            start_envoy, config, rendered.admin_socket, tmp_path / "envoy.log"
        )
        stack.callback(envoy.stop)
        yield RunningEdge(envoy, listen, tls_port)
