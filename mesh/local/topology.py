"""What `meshctl up` runs: the shop's services, how many instances, on which ports.

The first instance of each service takes the design's fixed ports (users
50051/9101, orders 50052/9102, inventory 50053/9103, payments 50054/9104);
extra instances take free ports and are found through the registry.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    grpc_port: int
    admin_port: int
    instances: int = 1


SHOP: tuple[ServiceSpec, ...] = (
    ServiceSpec("payments", 50054, 9104),
    ServiceSpec("inventory", 50053, 9103, instances=2),
    ServiceSpec("users", 50051, 9101),
    ServiceSpec("orders", 50052, 9102, instances=2),
)


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process to supervise: a name for its log prefix, argv and environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    service: str = ""


def service_processes(
    run_dir: Path,
    base_env: Mapping[str, str],
    *,
    nats_url: str,
    services: tuple[ServiceSpec, ...] = SHOP,
) -> list[ProcessSpec]:
    """One ProcessSpec per instance, all sharing the run dir's registry and data dir.

    Instances of one service share its database (one SQLite file in WAL mode,
    or the `<SERVICE>_DATABASE_URL` the user set): a service's data is the
    service's, not the instance's.
    """
    out = []
    for svc in services:
        for i in range(1, svc.instances + 1):
            first = i == 1
            env = {
                **base_env,
                "MESH_REGISTRY_DIR": str(run_dir / "registry"),
                "MESH_DATA_DIR": str(run_dir / "data"),
                "MESH_GRPC_PORT": str(svc.grpc_port if first else 0),
                "MESH_ADMIN_PORT": str(svc.admin_port if first else 0),
                "MESH_INSTANCE_ID": f"{svc.name}-{i}",
                "NATS_URL": nats_url,
                "PYTHONUNBUFFERED": "1",
            }
            out.append(
                ProcessSpec(
                    name=f"{svc.name}-{i}",
                    argv=(sys.executable, "-m", f"services.{svc.name}"),
                    env=env,
                    service=svc.name,
                )
            )
    return out
