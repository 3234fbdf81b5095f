"""Instances registered by host name (compose registers container names) reach a real Envoy.

File-based EDS accepts IP literals only: before the syncer resolved names, Envoy
rejected the whole file ("malformed IP address") and the cluster stayed empty.
Here every instance registers `localhost`; Envoy must list the resolved
127.0.0.1 endpoints, and its log must show no rejected update.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.edge.jwt_authn import jwks_sources
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import EndpointSync
from tests.support import pki
from tests.support.envoy import start_envoy
from tests.support.poll import eventually
from tests.support.ports import free_port


def _cluster_hosts(clusters_json: dict[str, object], cluster: str) -> set[tuple[str, int]]:
    for c in clusters_json.get("cluster_statuses", []):  # type: ignore[attr-defined]
        if c["name"] == cluster:
            return {
                (
                    h["address"]["socket_address"]["address"],
                    h["address"]["socket_address"]["port_value"],
                )
                for h in c.get("host_statuses", [])
            }
    return set()


async def test_envoy_takes_endpoints_registered_by_host_name(tmp_path: Path) -> None:
    ports = {"users": free_port(), "orders": free_port()}
    registry = StaticRegistry(
        [Instance(id=f"{s}-1", service=s, host="localhost", port=p) for s, p in ports.items()]
    )
    model = build_model(load_descriptor_set(DESCRIPTORS).file)
    listen = free_port()
    options = local_options(
        tmp_path,
        listen_port=listen,
        **pki.edge_options(tls_listen_port=free_port()),
    )
    config, _ = render_files(tmp_path, options)
    sync = EndpointSync(
        registry, model.clusters, Path(options.eds_dir), port_clusters=jwks_sources(options.auth)
    )
    await sync.start()
    await eventually(lambda: all(sync.snapshots.get(s) for s in ports), 10, "EDS written")
    envoy = await asyncio.to_thread(
        start_envoy, config, options.admin_socket, tmp_path / "envoy.log"
    )
    try:
        for service, port in ports.items():

            def listed(service: str = service, port: int = port) -> bool:
                hosts = _cluster_hosts(json.loads(envoy.admin("/clusters?format=json")), service)
                return ("127.0.0.1", port) in hosts

            await eventually(listed, 10, f"{service} endpoints in Envoy")
        assert "malformed IP address" not in (tmp_path / "envoy.log").read_text()
    finally:
        envoy.stop()
        await registry.close()
        await sync.stop()
