"""A local edge's admin is a 0600 Unix socket: its account may use it, no other may.

The attacker is another account on the same machine (`nobody`). With a TCP admin
on 127.0.0.1 it could stop the edge (`/quitquitquit`), take it out of service
(`/healthcheck/fail`) or rewrite the runtime that carries a release's traffic
split (`/runtime_modify`). Here the edge's directory is deliberately open to
others (0755), so the socket's own mode is the only barrier tested.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.edge.admin import EnvoyAdmin
from mesh.edge.envoy_config import render
from mesh.edge.jwt_authn import JWKS_CLUSTER
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import COMPOSE_OPTIONS, DESCRIPTORS, local_options, render_files
from mesh.edge.sync import write_endpoints
from tests.support import pki
from tests.support.envoy import start_envoy
from tests.support.other_account import as_nobody, needs_other_account
from tests.support.ports import free_port

MODEL = build_model(load_descriptor_set(DESCRIPTORS).file)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account may enter (pytest's own tmp_path is 0700, which would
    refuse the attacker before the socket's mode is ever asked)."""
    base = Path(tempfile.mkdtemp(prefix="mesh-edge-admin-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def test_a_local_edge_has_no_tcp_admin_and_a_container_edge_keeps_one(tmp_path: Path) -> None:
    local = render(MODEL, local_options(tmp_path, **pki.edge_options()))["admin"]["address"]
    assert local == {"pipe": {"path": str(tmp_path / "admin.sock"), "mode": 0o600}}
    compose = render(MODEL, COMPOSE_OPTIONS)["admin"]["address"]
    assert compose == {"socket_address": {"address": "0.0.0.0", "port_value": 9901}}


@needs_other_account
async def test_another_account_cannot_use_the_edge_admin(open_dir: Path) -> None:
    options = local_options(
        open_dir, listen_port=free_port(), **pki.edge_options(tls_listen_port=free_port())
    )
    config, _ = render_files(open_dir, options)
    for cluster in [*MODEL.clusters, JWKS_CLUSTER]:  # Envoy checks the EDS files exist
        write_endpoints(Path(options.eds_dir), cluster, [])
    envoy = await asyncio.to_thread(
        start_envoy, config, options.admin_socket, open_dir / "envoy.log"
    )
    sock = options.admin_socket
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert (await EnvoyAdmin(sock).get("/ready")).strip() == "LIVE"  # its own account

        def curl(method: str, path: str) -> tuple[int, str]:
            done = as_nobody(
                "curl", "-sSv", "-X", method, "--max-time", "3", "--unix-socket", sock,
                f"http://edge{path}",
            )  # fmt: skip
            return done.returncode, done.stdout + "\n" + done.stderr  # body, then curl's -v

        for method, path in (
            ("POST", "/quitquitquit"),
            ("POST", "/healthcheck/fail"),
            ("POST", "/runtime_modify?upstream.healthy_panic_threshold=0"),
            ("GET", "/config_dump"),
        ):
            code, out = curl(method, path)
            assert code == 7 and "connect fail" in out and "Permission denied" in out, out
        assert envoy.proc.poll() is None
        assert (await EnvoyAdmin(sock).get("/ready")).strip() == "LIVE"

        # The control: the same request from the same account reaches the admin once the
        # socket's mode lets it, so the refusals above were the mode's.
        os.chmod(sock, 0o666)
        code, out = curl("GET", "/ready")
        assert code == 0 and out.startswith("LIVE"), out
    finally:
        envoy.stop()


async def test_the_health_listener_answers_ready_and_nothing_else(tmp_path: Path) -> None:
    """What a kubelet probes instead of the admin (Kubernetes keeps the admin on
    127.0.0.1): GET /ready is 200 while the edge serves and 503 once the admin failed
    its health; nothing of the admin is reachable there."""
    health = free_port()
    options = local_options(
        tmp_path,
        listen_port=free_port(),
        health_port=health,
        **pki.edge_options(tls_listen_port=free_port()),
    )
    config, _ = render_files(tmp_path, options)
    for cluster in [*MODEL.clusters, JWKS_CLUSTER]:
        write_endpoints(Path(options.eds_dir), cluster, [])
    envoy = await asyncio.to_thread(start_envoy, config, options.admin_socket, tmp_path / "log")

    def get(path: str, method: str = "GET") -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{health}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert await asyncio.to_thread(get, "/ready") == 200
        for path, method in (("/quitquitquit", "POST"), ("/config_dump", "GET"),
                             ("/healthcheck/fail", "POST")):  # fmt: skip
            assert await asyncio.to_thread(get, path, method) == 404, path
        await asyncio.to_thread(envoy.admin_post, "/healthcheck/fail")
        assert await asyncio.to_thread(get, "/ready") == 503
        assert envoy.proc.poll() is None
    finally:
        envoy.stop()
