"""`meshctl up`: the whole mesh on one machine, no Docker.

Starts nats-server unless one is reachable at NATS_URL, the four services
(two instances of orders and inventory) against an embedded registry in the
run dir, and the Envoy edge with its meta server and endpoint sync in this
process; waits until every instance is healthy and the edge routes to each
public cluster; prints a table; then streams the processes' logs until
Ctrl-C / SIGTERM (or `meshctl down`), when it stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mesh.discovery.registry import Instance, Registry
from mesh.edge.meta import EdgeMeta
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import EndpointSync
from mesh.local.supervisor import Child, Supervisor
from mesh.local.topology import ProcessSpec, ServiceSpec, service_processes
from mesh.security.local import local_pki
from mesh.tools import envoy_binary, nats_server_binary

STATE_FILE = "up.json"


class UpError(RuntimeError):
    """The mesh could not be brought up; the message says what failed and why."""


@dataclass
class UpOptions:
    run_dir: Path = Path(".run")
    edge_port: int = 8080
    edge_admin_port: int = 9901
    nats_url: str = "nats://127.0.0.1:4222"
    services: tuple[ServiceSpec, ...] = ()  # from the topology file (mesh.toml)
    ready_timeout_s: float = 60.0
    grace_s: float = 15.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    edge_tls_port: int = 8443  # the edge's TLS listener (mTLS on)


def free_port_options(options: UpOptions) -> UpOptions:
    """The same mesh with every port picked by the kernel (next to another mesh, in tests)."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return replace(
        options,
        edge_port=pick(),
        edge_admin_port=pick(),
        edge_tls_port=pick(),
        services=tuple(replace(s, grpc_port=0, admin_port=0) for s in options.services),
    )


def _reachable(url: str, timeout: float = 0.5) -> bool:
    parsed = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout
        ):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _poll(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll an async predicate until true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)  # polling interval, not synchronisation
    raise UpError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class LocalMesh:
    """Everything `meshctl up` starts, and the order it stops them in."""

    def __init__(self, options: UpOptions, registry: Registry, supervisor: Supervisor) -> None:
        self.o = options
        self.registry = registry
        self.sup = supervisor
        self.meta: EdgeMeta | None = None
        self.sync: EndpointSync | None = None
        self.nats_child: Child | None = None
        self.envoy_child: Child | None = None
        self.nats_url = options.nats_url
        self.clusters: list[str] = []

    async def start(self) -> None:
        run = self.o.run_dir.resolve()
        (run / "registry").mkdir(parents=True, exist_ok=True)
        await self._start_nats(run)
        busy = [
            p
            for s in self.o.services
            for p in (s.grpc_port, s.admin_port)
            if p and not _port_free(p)
        ]
        for p in (self.o.edge_port, self.o.edge_admin_port, self.o.edge_tls_port):
            if not _port_free(p):
                busy.append(p)
        if busy:
            raise UpError(
                f"ports already in use: {sorted(busy)} (is another `meshctl up` running?"
                " `meshctl down` stops it)"
            )
        base_env = {k: v for k, v in self.o.env.items() if not k.startswith("MESH_GRPC")}
        self.pki = local_pki(run, self.o.env, [s.name for s in self.o.services])  # mTLS
        base_env.update(self.pki.env)
        for spec in service_processes(
            run, base_env, nats_url=self.nats_url, services=self.o.services
        ):
            await self.sup.start(spec)
        await self._start_edge(run)

    async def _start_nats(self, run: Path) -> None:
        if _reachable(self.nats_url):
            return
        parsed = urllib.parse.urlsplit(self.nats_url)
        if parsed.hostname not in ("127.0.0.1", "localhost"):
            raise UpError(f"NATS_URL={self.nats_url} is not reachable")
        port = parsed.port or 4222
        store = run / "nats"
        store.mkdir(parents=True, exist_ok=True)
        spec = ProcessSpec(
            name="nats",
            argv=(
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "-js",
                "-sd",
                str(store),
            ),
            env=dict(self.o.env),
        )
        self.nats_child = await self.sup.start(spec)

        async def up() -> bool:
            return _reachable(self.nats_url, 0.2)

        await _poll(up, 10, f"nats-server on {self.nats_url}")

    async def _start_edge(self, run: Path) -> None:
        edge_dir = run / "edge"
        fds = load_descriptor_set(DESCRIPTORS)
        model = build_model(fds.file)
        self.clusters = model.clusters
        self.meta = EdgeMeta(fds, model, self.registry)
        await self.meta.start()
        options = local_options(
            edge_dir,
            listen_port=self.o.edge_port,
            admin_port=self.o.edge_admin_port,
            meta_port=self.meta.port,
            tls_listen_port=self.o.edge_tls_port,
            **self.pki.edge_options,
        )
        config, _ = render_files(edge_dir, options)
        self.sync = EndpointSync(self.registry, model.clusters, Path(options.eds_dir))
        await self.sync.start()
        spec = ProcessSpec(
            name="envoy",
            argv=(
                envoy_binary(),
                "-c",
                str(config),
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ),
            env=dict(self.o.env),
        )
        self.envoy_child = await self.sup.start(spec)

    async def wait_ready(self) -> dict[str, list[Instance]]:
        found: dict[str, list[Instance]] = {}

        async def all_registered() -> bool:
            for svc in self.o.services:
                if self.sup.exited.is_set():
                    dead = [c for c in self.sup.children if not c.running]
                    report = "\n".join(f"--- {c.spec.name}:\n{c.tail()}" for c in dead)
                    raise UpError(f"a process exited during start-up:\n{report}")
                found[svc.name] = await self.registry.healthy(svc.name)
                if len(found[svc.name]) < svc.instances:
                    return False
            return True

        await _poll(all_registered, self.o.ready_timeout_s, "every instance to be healthy")
        await _poll(self._edge_ready, self.o.ready_timeout_s, "the Envoy edge to be ready")
        return found

    async def _edge_ready(self) -> bool:
        import aiohttp

        url = f"http://127.0.0.1:{self.o.edge_admin_port}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
                async with s.get(f"{url}/ready") as r:
                    if (await r.text()).strip() != "LIVE":
                        return False
                async with s.get(f"{url}/clusters?format=json") as r:
                    stats = json.loads(await r.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        healthy = routable_hosts(stats)
        return all(healthy.get(c, 0) >= 1 for c in self.clusters)

    async def stop(self) -> None:
        services = {s.name for s in self.o.services}
        await self.sup.stop_all(self.o.grace_s, first=lambda c: c.spec.service in services)
        if self.sync is not None:
            await self.sync.stop()
        if self.meta is not None:
            await self.meta.stop()
        # A killed instance could not deregister: on Consul its entry would stay
        # until the agent reaps it (the embedded registry expires it by lease, and
        # ignores ids this object did not register).
        for child in self.sup.children:
            if child.spec.service:
                with contextlib.suppress(Exception):
                    await self.registry.deregister(child.spec.env["MESH_INSTANCE_ID"])


def routable_hosts(clusters_json: dict[str, Any]) -> dict[str, int]:
    """Hosts per cluster Envoy will route to, from its admin `/clusters?format=json`.

    A new host waits for its first active health check (`pending_active_hc`)
    before it takes traffic; the edge is ready only when that has passed.
    """
    bad = ("failed_active_health_check", "pending_active_hc", "failed_outlier_check")
    out: dict[str, int] = {}
    for c in clusters_json.get("cluster_statuses", []):
        out[c["name"]] = sum(
            1
            for h in c.get("host_statuses", [])
            if h.get("health_status", {}).get("eds_health_status") == "HEALTHY"
            and not any(h.get("health_status", {}).get(k) for k in bad)
        )
    return out


def table(instances: Mapping[str, list[Instance]], edge_port: int, nats_url: str) -> str:
    rows = [("service", "instance", "grpc", "admin", "version")]
    for name in sorted(instances):
        for i in sorted(instances[name], key=lambda i: i.id):
            rows.append((name, i.id, i.address, i.meta.get("admin_port", "-"), i.version))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"edge (gRPC + REST): http://127.0.0.1:{edge_port}   nats: {nats_url}")
    lines.append("payments is internal: not routed by the edge")
    return "\n".join(lines)


async def run_up(options: UpOptions, registry: Registry) -> int:
    """Bring the mesh up and keep it in the foreground until a signal; returns an exit code."""
    run = options.run_dir.resolve()
    run.mkdir(parents=True, exist_ok=True)
    state = run / STATE_FILE
    if state.exists():
        with contextlib.suppress(ValueError, OSError):
            pid = int(json.loads(state.read_text())["pid"])
            if pid != os.getpid() and _alive(pid):
                raise UpError(f"meshctl up is already running (pid {pid}); `meshctl down` stops it")
    sup = Supervisor()
    mesh = LocalMesh(options, registry, sup)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    state.write_text(json.dumps({"pid": os.getpid(), "edge_port": options.edge_port}))
    try:
        await mesh.start()
        ready = asyncio.create_task(mesh.wait_ready())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpError):
                await ready
            return 0
        stopped.cancel()
        print(table(ready.result(), options.edge_port, mesh.nats_url), flush=True)
        print("mesh is up; Ctrl-C (or `meshctl down`) stops it", flush=True)
        exited = asyncio.create_task(sup.exited.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for t in (exited, stopped):
            t.cancel()
        return 0 if stop.is_set() else 1
    finally:
        print("stopping the mesh...", flush=True)
        await mesh.stop()
        state.unlink(missing_ok=True)
        print("mesh stopped", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_down(run_dir: Path, timeout_s: float = 30.0) -> int:
    """Stop a `meshctl up` started elsewhere (another terminal or `--detach`)."""
    state = run_dir.resolve() / STATE_FILE
    try:
        pid = int(json.loads(state.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        print("no mesh is running (no .run/up.json)")
        return 0
    if not _alive(pid):
        state.unlink(missing_ok=True)
        print(f"mesh (pid {pid}) was not running; cleaned up its state file")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"mesh (pid {pid}) stopped")
            return 0
        time.sleep(0.1)  # polling for the process to exit
    print(f"mesh (pid {pid}) did not stop within {timeout_s:.0f}s")
    return 1
