"""Keep Envoy's upstream endpoints equal to the registry's healthy instances.

Envoy reads each cluster's endpoints from a file (file-based EDS) and reloads
it when the file is replaced by a rename, so a new instance gets edge traffic
without restarting Envoy. The same syncer runs locally (embedded registry) and
in compose (Consul).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from mesh.discovery.registry import Registry
from mesh.edge.envoy_config import eds_document, write_atomically

log = logging.getLogger(__name__)


def write_endpoints(eds_dir: Path, cluster: str, endpoints: list[tuple[str, int]]) -> None:
    eds_dir.mkdir(parents=True, exist_ok=True)
    doc = eds_document(cluster, sorted(endpoints))
    write_atomically(eds_dir / f"{cluster}.json", json.dumps(doc, indent=1).encode())


class EndpointSync:
    """One watch per cluster; every snapshot rewrites that cluster's EDS file."""

    def __init__(self, registry: Registry, clusters: list[str], eds_dir: Path) -> None:
        self._registry = registry
        self._clusters = clusters
        self._eds_dir = eds_dir
        self._tasks: list[asyncio.Task[None]] = []
        self.snapshots: dict[str, list[tuple[str, int]]] = {}

    def prepare(self) -> None:
        """Envoy needs every EDS file to exist before it starts: write empty ones."""
        for cluster in self._clusters:
            if not (self._eds_dir / f"{cluster}.json").exists():
                write_endpoints(self._eds_dir, cluster, [])

    async def start(self) -> None:
        self.prepare()
        self._tasks = [asyncio.create_task(self._follow(c)) for c in self._clusters]

    async def _follow(self, cluster: str) -> None:
        async for instances in self._registry.watch(cluster):
            endpoints = sorted((i.host, i.port) for i in instances)
            if self.snapshots.get(cluster) != endpoints:
                self.snapshots[cluster] = endpoints
                write_endpoints(self._eds_dir, cluster, endpoints)
                log.info("edge endpoints for %s: %s", cluster, endpoints)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
