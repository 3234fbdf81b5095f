"""The edge meta server: what Envoy routes reflection and health to.

Reflection through the edge must list only public services, and a health
check through the edge must say whether a public service has a healthy
instance anywhere. Neither fits one upstream cluster, so this small gRPC
server answers both: reflection over a descriptor pool from which internal
services are stripped, and health kept up to date from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.discovery.registry import Registry
from mesh.edge.model import EdgeModel
from mesh.reflection import enable_reflection

log = logging.getLogger(__name__)


def public_descriptor_pool(
    fds: descriptor_pb2.FileDescriptorSet, model: EdgeModel
) -> descriptor_pool.DescriptorPool:
    """A pool with the public services' files and their imports, internal services removed."""
    internal = {s.full_name for s in model.services if s.internal}
    public = {s.full_name for s in model.public}
    by_name = {f.name: f for f in fds.file}
    roots = [
        f.name for f in fds.file if any(f"{f.package}.{svc.name}" in public for svc in f.service)
    ]
    roots += [f.name for f in fds.file if f.package == "google.rpc"]  # error details
    needed: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in needed or name not in by_name:
            continue
        needed.add(name)
        stack.extend(by_name[name].dependency)
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:  # protoc lists dependencies before dependants
        if f.name not in needed:
            continue
        copy = descriptor_pb2.FileDescriptorProto()
        copy.CopyFrom(f)
        kept = [s for s in copy.service if f"{copy.package}.{s.name}" not in internal]
        del copy.service[:]
        copy.service.extend(kept)
        pool.Add(copy)
    return pool


class EdgeMeta:
    """Reflection + aggregated health, served on one loopback port for Envoy."""

    def __init__(
        self,
        fds: descriptor_pb2.FileDescriptorSet,
        model: EdgeModel,
        registry: Registry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._model = model
        self._registry = registry
        self._pool = public_descriptor_pool(fds, model)
        self._health = health_aio.HealthServicer()
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._host = host
        self._requested_port = port
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        names = [s.full_name for s in self._model.public]
        enable_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
            self._server,
            pool=self._pool,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = self._server.add_insecure_port(f"{self._host}:{self._requested_port}")
        await self._server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        for cluster in self._model.clusters:
            await self._set_cluster(cluster, serving=False)
            self._tasks.append(asyncio.create_task(self._follow(cluster)))

    async def _set_cluster(self, cluster: str, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for svc in self._model.public:
            if svc.cluster == cluster:
                await self._health.set(svc.full_name, status)

    async def _follow(self, cluster: str) -> None:
        async for instances in self._registry.watch(cluster):
            await self._set_cluster(cluster, serving=bool(instances))

    async def stop(self, grace: float | None = 1.0) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self._server.stop(grace)
