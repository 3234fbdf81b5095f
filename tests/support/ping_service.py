"""The ping service as a real process: `python -m tests.support.ping_service`.

Runs through `mesh.server.run_service` exactly as a shop service does, so
tests can send it signals and watch it drain, deregister and exit. Everything
comes from the environment (MESH_GRPC_PORT, MESH_REGISTRY_DIR, MESH_DRAIN_GRACE_S...);
PING_BLOCK_BUILD=1 makes the build hang, like one waiting on a dead database.
"""

from __future__ import annotations

import asyncio
import logging
import os

from shop.testing.v1 import ping_pb2_grpc

from mesh.server import ServiceDefinition, run_service
from mesh.settings import Settings
from tests.support.ping import PingServicer

PING_SERVICE = "shop.testing.v1.PingService"


async def build(settings: Settings, _runtime: object) -> ServiceDefinition:
    if os.environ.get("PING_BLOCK_BUILD"):
        # Stands in for a build stuck on a dependency, to test signals during start-up.
        logging.getLogger("ping").info("build blocked")
        await asyncio.Event().wait()
    return ServiceDefinition(
        name="ping",
        servicers=[
            (ping_pb2_grpc.add_PingServiceServicer_to_server, PingServicer(settings.instance_id))
        ],
        service_names=[PING_SERVICE],
    )


def main() -> None:
    run_service("ping", build, grpc_port=0, admin_port=0)


if __name__ == "__main__":
    main()
