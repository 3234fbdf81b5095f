"""Keep Envoy's upstream endpoints equal to the registry's healthy instances.

Envoy reads each cluster's endpoints from a file (file-based EDS) and reloads
it when the file is replaced by a rename, so a new instance gets edge traffic
without restarting Envoy. The same syncer runs locally (embedded registry) and
in compose (Consul).

EDS accepts only IP literals ("malformed IP address" otherwise, and the whole
file is rejected), while instances may register a host name (compose: the
container's name). The syncer therefore resolves every host itself before it
writes the file, and resolves again every `resolve_interval_s` so an instance
whose name now points elsewhere (a container re-created with a new address) is
followed without waiting for a registry change. Why here and not in Envoy
(STRICT_DNS clusters): the set of instances is dynamic, one STRICT_DNS cluster
per instance would need CDS rewrites on every registration, and resolving here
keeps one code path for names and literals. Limits: a name that does not
resolve is left out (logged once per change of outcome) until it resolves; every
address a name resolves to becomes an endpoint (health checks drop the ones that
do not answer).

Traffic policy (`mesh/edge/subsets.py`): given a policy store, the syncer also
watches each cluster's policy; every endpoint carries its instance's track and a
weight derived from the policy, and the policies' edge faults go to the RTDS file
beside the EDS files. A policy change rewrites the cluster's EDS file (and the RTDS
file) at once; Envoy reloads both on the rename, no restart.

Besides the gRPC clusters (named after their registry service, at the instances'
gRPC port), `port_clusters` adds clusters at another port an instance registers in
its meta: `{"jwks": ("users", "admin_port")}` points the edge's JWKS fetch at the
users instances' admin ports (mesh/edge/jwt_authn.py). An instance without that
meta key (or with a non-numeric one) is left out of such a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from base.addresses import is_ip_literal
from mesh.discovery.registry import Instance, Registry
from mesh.edge.envoy_config import write_atomically
from mesh.edge.subsets import (
    RUNTIME_FILE,
    TrackedEndpoint,
    eds_document,
    fault_runtime,
    rtds_document,
)
from mesh.traffic.policy import PolicyStore, TrafficPolicy, track_of

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]
# host -> addresses (IP literals); raises OSError when the name does not resolve.
Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve_host(host: str) -> list[str]:
    """The IP addresses of `host` (itself if it is a literal), sorted, without duplicates."""
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def write_endpoints(
    eds_dir: Path,
    cluster: str,
    endpoints: Sequence[Endpoint | TrackedEndpoint],
    policy: TrafficPolicy | None = None,
) -> None:
    """The cluster's EDS file; plain (host, port) endpoints get the track "" (none).
    Also writes an empty runtime file if there is none yet: Envoy refuses to start
    without the RTDS file its config names."""
    eds_dir.mkdir(parents=True, exist_ok=True)
    if not (eds_dir / RUNTIME_FILE).exists():
        write_runtime(eds_dir, {})
    tracked = [e if isinstance(e, TrackedEndpoint) else TrackedEndpoint(*e, "") for e in endpoints]
    doc = eds_document(cluster, tracked, policy)
    write_atomically(eds_dir / f"{cluster}.json", json.dumps(doc, indent=1).encode())


def write_runtime(eds_dir: Path, policies: dict[str, TrafficPolicy | None]) -> None:
    """The RTDS file holding the policies' edge faults (empty: no fault)."""
    eds_dir.mkdir(parents=True, exist_ok=True)
    doc = rtds_document(fault_runtime(policies))
    write_atomically(eds_dir / RUNTIME_FILE, json.dumps(doc, indent=1).encode())


class EndpointSync:
    """One watch per cluster; every snapshot (and every re-resolution that changes an
    address) rewrites that cluster's EDS file with IP endpoints."""

    def __init__(
        self,
        registry: Registry,
        clusters: list[str],
        eds_dir: Path,
        *,
        resolve_interval_s: float = 10.0,
        resolver: Resolver = resolve_host,
        policies: PolicyStore | None = None,
        port_clusters: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self._registry = registry
        # cluster -> (registry service, meta key of the port; "" = the gRPC port)
        self._sources: dict[str, tuple[str, str]] = {c: (c, "") for c in clusters}
        self._sources.update(port_clusters or {})
        self._clusters = list(self._sources)
        self._eds_dir = eds_dir
        self._resolve_interval_s = resolve_interval_s
        self._resolver = resolver
        self._tasks: list[asyncio.Task[None]] = []
        self._unresolved: set[str] = set()
        self._policy_store = policies
        self.policies: dict[str, TrafficPolicy | None] = {}
        self.snapshots: dict[str, list[TrackedEndpoint]] = {}
        self._published: dict[str, tuple[list[TrackedEndpoint], TrafficPolicy | None]] = {}

    def prepare(self) -> None:
        """Envoy needs every EDS file to exist before it starts: write empty ones."""
        for cluster in self._clusters:
            if not (self._eds_dir / f"{cluster}.json").exists():
                write_endpoints(self._eds_dir, cluster, [])
        if not (self._eds_dir / RUNTIME_FILE).exists():
            write_runtime(self._eds_dir, {})

    async def start(self) -> None:
        self.prepare()
        self._tasks = [asyncio.create_task(self._follow(c)) for c in self._clusters]

    async def resolve(
        self, instances: Sequence[Instance], port_meta: str = ""
    ) -> list[TrackedEndpoint]:
        """IP endpoints of `instances` (at the port named by meta key `port_meta`, else
        the gRPC port); hosts that do not resolve are left out (logged)."""
        out: set[TrackedEndpoint] = set()
        for instance in instances:
            port = instance.port
            if port_meta:
                raw = instance.meta.get(port_meta, "")
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    continue
                port = int(raw)
            try:
                addresses = await self._resolver(instance.host)
            except OSError as exc:
                if instance.host not in self._unresolved:
                    self._unresolved.add(instance.host)
                    log.warning(
                        "edge: cannot resolve %s (instance %s), left out: %s",
                        instance.host,
                        instance.id,
                        exc,
                    )
                continue
            if instance.host in self._unresolved:
                self._unresolved.discard(instance.host)
                log.info("edge: %s resolves again: %s", instance.host, addresses)
            track = track_of(instance)
            out.update(TrackedEndpoint(address, port, track) for address in addresses)
        return sorted(out)

    async def _publish(self, cluster: str, instances: Sequence[Instance]) -> None:
        endpoints = await self.resolve(instances, self._sources[cluster][1])
        self.snapshots[cluster] = endpoints
        policy = self.policies.get(cluster)
        if self._published.get(cluster) != (endpoints, policy):
            self._published[cluster] = (endpoints, policy)
            write_endpoints(self._eds_dir, cluster, endpoints, policy)
            shown = [(e.address, e.port, e.track) for e in endpoints]
            log.info("edge endpoints for %s: %s", cluster, shown)

    async def _watch_policy(self, cluster: str, changed: asyncio.Event) -> None:
        """Follow the cluster's traffic policy; each change re-renders its endpoints
        and the runtime's faults."""
        assert self._policy_store is not None
        async for policy in self._policy_store.watch(cluster):
            self.policies[cluster] = policy
            write_runtime(self._eds_dir, self.policies)
            log.info("edge traffic policy for %s: %s", cluster, policy and policy.to_json())
            changed.set()

    async def _follow(self, cluster: str) -> None:
        latest: list[Instance] | None = None
        changed = asyncio.Event()
        policy_watch = (
            asyncio.create_task(self._watch_policy(cluster, changed))
            if self._policy_store is not None and not self._sources[cluster][1]
            else None
        )

        async def watch() -> None:
            nonlocal latest
            try:
                async for instances in self._registry.watch(self._sources[cluster][0]):
                    latest = list(instances)
                    changed.set()
            finally:
                changed.set()  # wake the loop below: the watch has ended

        watcher = asyncio.create_task(watch())
        try:
            while True:
                try:
                    await asyncio.wait_for(changed.wait(), self._resolve_interval_s)
                    timed_out = False
                except TimeoutError:
                    timed_out = True
                changed.clear()
                if latest is not None and not (
                    timed_out and all(is_ip_literal(i.host) for i in latest)
                ):
                    await self._publish(cluster, latest)
                if watcher.done():
                    watcher.result()  # a watch that failed fails the sync, as before
                    return
        finally:
            for task in (watcher, policy_watch):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
