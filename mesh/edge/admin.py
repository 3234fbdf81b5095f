"""Envoy's admin interface: where a local edge serves it, and reading it.

Why a Unix socket. Envoy's admin answers anyone who reaches it, and much of it
acts: `POST /quitquitquit` stops the edge, `/healthcheck/fail` takes it out of
service, `/runtime_modify` rewrites the runtime that carries the release's
traffic split, `/logging` turns on debug logs that print request headers
(bearer tokens). Envoy's own docs ask that it be reachable only from a trusted
network; on a shared machine loopback is not one, since every account reaches
127.0.0.1. So the edge that `meshctl up` runs serves its admin on a Unix socket
made `0600` by Envoy (`pipe.mode`) inside the run directory: only the account
that runs the mesh can connect (`curl --unix-socket .run/edge/admin.sock
http://edge/stats`). Containers (compose, Kubernetes) keep a TCP admin inside
their own network namespace, where the kubelet's probes reach it.

Where: `<run dir>/edge/admin.sock`. A socket's path must fit `sun_path` (107 bytes
on Linux), which a checkout nested ~86 characters deep passes; there the socket is
`/tmp/meshctl-<uid>/edge-<hash of the edge directory>.sock` instead, in a directory
that must be the account's own and 0700 (`mesh.private_dir.own_private_dir`), so
`make run` works from any checkout and every reader finds the same path.

Limits: that directory is refused, with the reason, when another account made it
first (or it is a link, or open to others); a path still too long (a relative
run directory given from deep inside) is refused too (`socket_path_error`), rather
than failing inside Envoy. `up` removes the socket once Envoy has stopped; one a
killed `up` left is reused by the next start from the same checkout.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp

from mesh.private_dir import NotPrivate, own_private_dir

SOCKET_NAME = "admin.sock"
SOCKET_MODE = 0o600
# sun_path is 108 bytes on Linux, the last one the terminating NUL.
MAX_SOCKET_PATH = 107

# The host states of `/clusters?format=json` that keep a host from taking traffic.
_NOT_ROUTED = (
    ("failed_outlier_check", "ejected"),
    ("failed_active_health_check", "failing health checks"),
    ("pending_active_hc", "pending health check"),
)
ROUTED = "routed"


def short_socket_dir() -> Path:
    """The account's own directory for admin sockets whose run directory is too deep."""
    return Path("/tmp") / f"meshctl-{os.geteuid()}"


def socket_in(edge_dir: Path) -> Path:
    """Where a local edge whose files are in `edge_dir` serves its admin (module doc)."""
    path = edge_dir / SOCKET_NAME
    if socket_path_error(path) is None:
        return path
    digest = hashlib.sha256(os.fsencode(edge_dir.resolve())).hexdigest()[:16]
    return short_socket_dir() / f"edge-{digest}.sock"


def prepare_socket(path: Path) -> None:
    """Ready the directory of `path` (from `socket_in`) when it is the short one; raises
    ValueError saying why when the socket cannot be there."""
    if why := socket_path_error(path):
        raise ValueError(why)
    if path.parent == short_socket_dir():
        try:
            own_private_dir(path.parent)
        except NotPrivate as exc:
            raise NotPrivate(
                f"the run directory is too deep for the Envoy admin socket's path, and {exc};"
                " or use a shorter run directory (--run-dir)"
            ) from None


def socket_path_error(path: Path) -> str | None:
    """Why `path` cannot be the admin socket (None: it can)."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        return (
            f"the Envoy admin socket {path} is {size} bytes long; a Unix socket's path "
            f"must be at most {MAX_SOCKET_PATH}: use a shorter run directory (--run-dir)"
        )
    return None


def host_states(clusters_doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    """cluster -> address -> what the edge does with that host, from `/clusters?format=json`.

    `routed` only for a host EDS calls HEALTHY that has passed its first active
    health check and is not ejected: a new host waits for that check
    (`pending_active_hc`) before it takes traffic.
    """
    out: dict[str, dict[str, str]] = {}
    for cluster in clusters_doc.get("cluster_statuses", []):
        hosts = out.setdefault(cluster.get("name", ""), {})
        for h in cluster.get("host_statuses", []):
            sock = h.get("address", {}).get("socket_address", {})
            status = h.get("health_status", {})
            state = next((text for key, text in _NOT_ROUTED if status.get(key)), None)
            if state is None and status.get("eds_health_status") != "HEALTHY":
                state = str(status.get("eds_health_status", "unknown")).lower()
            hosts[f"{sock.get('address')}:{sock.get('port_value')}"] = state or ROUTED
    return out


def routed_hosts(clusters_doc: dict[str, Any]) -> dict[str, set[str]]:
    """cluster -> the addresses the edge routes to now."""
    return {
        cluster: {addr for addr, state in hosts.items() if state == ROUTED}
        for cluster, hosts in host_states(clusters_doc).items()
    }


def routable_hosts(clusters_doc: dict[str, Any]) -> dict[str, int]:
    """cluster -> how many hosts the edge routes to now."""
    return {cluster: len(hosts) for cluster, hosts in routed_hosts(clusters_doc).items()}


class EnvoyAdmin:
    """A client of one Envoy's admin on its Unix socket (asyncio, and blocking for tests
    and scripts). Every request is a new connection: the admin is read a few times a
    second at most, and a kept connection would outlive an Envoy the supervisor
    restarted."""

    def __init__(self, socket_path: Path | str, timeout_s: float = 2.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s

    async def get(self, path: str) -> str:
        """The body of GET `path`; raises `aiohttp.ClientError`/`TimeoutError` when the
        edge does not answer, and `aiohttp.ClientResponseError` on an error status."""
        connector = aiohttp.UnixConnector(path=self.socket_path)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as s,
            s.get(f"http://edge{path}", raise_for_status=True) as r,
        ):
            return await r.text()

    async def clusters(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await self.get("/clusters?format=json"))
        return doc

    def request(self, method: str, path: str) -> str:
        """Blocking `method path` (tests, scripts); raises OSError or
        `http.client.HTTPException`, and RuntimeError on an error status."""
        conn = _UnixHTTPConnection(self.socket_path, self.timeout_s)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            r = conn.getresponse()
            body = r.read().decode()
            if r.status >= 400:
                raise RuntimeError(f"Envoy admin {method} {path}: HTTP {r.status}: {body}")
            return body
        finally:
            conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout_s: float) -> None:
        super().__init__("edge", timeout=timeout_s)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
