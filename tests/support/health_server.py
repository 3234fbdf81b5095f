"""A small grpc.health.v1 server on loopback, and a process that registers one.

`start_health_server()` gives discovery tests a real grpc.aio server whose
health they can flip. Run as a module it is "another process" for the
cross-process tests: it serves health, registers itself in the registry named
on the command line, prints `READY <port>` and stays up until its stdin closes
(then it deregisters cleanly) or it is killed (then it does not):

    python -m tests.support.health_server --service S --id I \
        (--embedded DIR [--ttl 1.5 --heartbeat 0.2] | --consul HOST:PORT [--interval 0.2 ...])
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.discovery.registry import Instance, Registry
from mesh.security.identity import MeshIdentity

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class HealthServer:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int
    services: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        """Flip the whole server ("") and every named service, as a drain does."""
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.services):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


async def start_health_server(
    services: Sequence[str] = (), port: int = 0, identity: MeshIdentity | None = None
) -> HealthServer:
    """A real grpc.aio server on 127.0.0.1 serving grpc.health.v1, all SERVING
    (mTLS requiring a mesh client certificate with `identity`)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    target = f"127.0.0.1:{port}"
    bound = (
        server.add_insecure_port(target)
        if identity is None
        else server.add_secure_port(target, identity.server_credentials())
    )
    await server.start()
    hs = HealthServer(server, health, bound, tuple(services))
    await hs.set_serving(True)
    return hs


def _registry(args: argparse.Namespace) -> Registry:
    if args.embedded:
        from mesh.discovery.embedded import EmbeddedRegistry

        return EmbeddedRegistry(
            args.embedded, ttl_s=args.ttl, heartbeat_s=args.heartbeat, poll_s=0.05
        )
    from mesh.discovery.consul import ConsulRegistry

    return ConsulRegistry(
        args.consul,
        args.token,
        check_interval_s=args.interval,
        check_timeout_s=args.interval,
        deregister_critical_after_s=args.deregister_after,
    )


async def _serve_registered(args: argparse.Namespace) -> None:
    hs = await start_health_server()
    registry = _registry(args)
    instance = Instance(args.id, args.service, "127.0.0.1", hs.port, version="0.1.0")
    await registry.register(instance)
    print(f"READY {hs.port}", flush=True)
    # Until the parent closes our stdin; a SIGKILL skips the clean part below.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await registry.deregister(instance.id)
    await registry.close()
    await hs.stop(None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--id", required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--embedded", metavar="DIR")
    where.add_argument("--consul", metavar="HOST:PORT")
    parser.add_argument("--token", default="")
    parser.add_argument("--ttl", type=float, default=1.5)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--deregister-after", type=float, default=1.0)
    asyncio.run(_serve_registered(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
