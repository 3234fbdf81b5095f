"""`meshctl edge serve`: the edge's companion process in the compose topology.

Serves the edge meta server (reflection over the public contracts, health
aggregated from the registry) on `--port` and keeps Envoy's file-based
endpoints in `--eds-dir` equal to the registry's healthy instances (Consul in
compose). `meshctl up` runs the same two pieces inside its own process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from mesh.discovery.registry import Registry
from mesh.edge.jwt_authn import EdgeAuthOptions, jwks_sources
from mesh.edge.meta import EdgeMeta
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, descriptor_source
from mesh.edge.sync import EndpointSync
from mesh.traffic.stores import policy_store_for

log = logging.getLogger(__name__)


async def serve_edge(
    registry: Registry,
    *,
    host: str,
    port: int,
    eds_dir: Path,
    descriptors: str | Path = DESCRIPTORS,
    jwks_service: str = EdgeAuthOptions().jwks_service,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT when no event is given). `jwks_service`
    is the registry service whose instances serve the end users' keys (the rendered
    config's `[edge.auth] jwks_service`: the shop's `users` by default; "" for an edge
    with no issuer, whose config fetches no keys)."""
    fds = load_descriptor_set(descriptor_source(descriptors))
    model = build_model(fds.file)
    meta = EdgeMeta(fds, model, registry, host=host, port=port)
    # The JWKS cluster of the rendered config: its endpoints are the issuer's instances.
    sync = EndpointSync(
        registry,
        model.clusters,
        eds_dir,
        policies=policy_store_for(registry),
        port_clusters=jwks_sources(EdgeAuthOptions(jwks_service=jwks_service)),
    )
    done = stop or asyncio.Event()
    if stop is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
    await sync.start()
    await meta.start()
    log.info("edge meta on %s:%d, endpoints in %s", host, meta.port, eds_dir)
    try:
        await done.wait()
    finally:
        await meta.stop()
        await sync.stop()
