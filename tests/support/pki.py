"""A test mesh CA, and mTLS clients and servers holding its identities.

Every test process gets one CA in a temporary directory (`session_pki()`); the
autouse fixture in tests/conftest.py points MESH_PKI_DIR at it, so services the
tests start (in process or as child processes, which inherit the environment)
issue themselves per-instance certificates from it, exactly as under `meshctl up`.

    channel = mtls_channel(address, "payments", caller="orders")   # as orders calls payments
    server, port = await mtls_server(add_servicers, "payments")     # a server holding an identity
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from mesh.security.identity import MeshIdentity
from mesh.security.pki import KeyPair, create_ca, issue
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings

# The identity a test client uses by default to reach each shop service: one its policy allows.
DEFAULT_CALLER: dict[str, str] = {
    "users": "edge",
    "orders": "edge",
    "inventory": "orders",
    "payments": "orders",
}

_session: SecuritySettings | None = None


def session_pki() -> SecuritySettings:
    """The test process's CA directory (made once, removed at exit)."""
    global _session
    inherited = os.environ.get("MESH_PKI_DIR")
    if _session is None and inherited and Path(inherited, "ca.key").is_file():
        _session = SecuritySettings(pki_dir=inherited)  # a child process of the test run
    if _session is None:
        directory = Path(tempfile.mkdtemp(prefix="mesh-test-pki-"))
        atexit.register(shutil.rmtree, directory, True)
        _session = SecuritySettings(pki_dir=str(directory / "pki"))
        PkiStore(_session).init_ca()
    return _session


def store() -> PkiStore:
    return PkiStore(session_pki())


def identity(service: str, **overrides: Any) -> MeshIdentity:
    """A per-instance identity of `service` from the test CA (`overrides`: SecuritySettings)."""
    return MeshIdentity.load(service, dataclasses.replace(session_pki(), **overrides))


def pair(service: str, *, lifetime_s: float = 3600.0, issued_ago_s: float = 0.0) -> KeyPair:
    """A certificate of `service` from the test CA; `issued_ago_s` > lifetime: expired."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=issued_ago_s)
    ca = store().load_ca()
    return issue(ca, service, session_pki().trust_domain, dt.timedelta(seconds=lifetime_s), now=now)


def foreign_pair(service: str) -> tuple[KeyPair, KeyPair]:
    """(another CA, a certificate of `service` from it): same names, untrusted issuer."""
    ca = create_ca(session_pki().trust_domain, dt.timedelta(days=1))
    return ca, issue(ca, service, session_pki().trust_domain, dt.timedelta(hours=1))


def ca_pem() -> bytes:
    return store().ca_bundle()


def credentials(pair_: KeyPair | None, root: bytes | None = None) -> grpc.ChannelCredentials:
    """Client credentials trusting `root` (default: the test CA) presenting `pair_` (or none)."""
    return grpc.ssl_channel_credentials(
        root_certificates=root or ca_pem(),
        private_key=pair_.key_pem if pair_ else None,
        certificate_chain=pair_.cert_pem if pair_ else None,
    )


def mtls_channel(
    address: str,
    callee: str,
    *,
    caller: str | None = None,
    pair_: KeyPair | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `callee` at `address`, as `caller` (default: DEFAULT_CALLER)."""
    presented = pair_ or pair(caller or DEFAULT_CALLER.get(callee, "orders"))
    name = f"{callee}.{session_pki().trust_domain}"
    return grpc.aio.secure_channel(
        address,
        credentials(presented),
        options=[("grpc.ssl_target_name_override", name), *(options or [])],
    )


def sync_mtls_channel(address: str, callee: str, *, caller: str | None = None) -> grpc.Channel:
    """The blocking-API twin of `mtls_channel`."""
    presented = pair(caller or DEFAULT_CALLER.get(callee, "orders"))
    name = f"{callee}.{session_pki().trust_domain}"
    return grpc.secure_channel(
        address, credentials(presented), options=[("grpc.ssl_target_name_override", name)]
    )


async def mtls_server(
    add: Callable[[grpc.aio.Server], None],
    service: str,
    *,
    interceptors: list[Any] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server on a free loopback port, mTLS as `service`."""
    server = grpc.aio.server(interceptors=interceptors or [], options=[("grpc.so_reuseport", 0)])
    add(server)
    port = server.add_secure_port("127.0.0.1:0", identity(service).server_credentials())
    await server.start()
    return server, port


def grpcurl_args(callee: str, *, caller: str | None = None) -> list[str]:
    """grpcurl flags for mTLS to `callee` as `caller` (certificate files in the test PKI dir)."""
    who = caller or DEFAULT_CALLER.get(callee, "orders")
    st = store()
    if not st.cert_path(who).is_file():
        st.issue(who)
    return [
        "-cacert", str(st.ca_cert_path),
        "-cert", str(st.cert_path(who)),
        "-key", str(st.key_path(who)),
        "-servername", f"{callee}.{session_pki().trust_domain}",
    ]  # fmt: skip


def edge_options(**overrides: Any) -> dict[str, Any]:
    """`EdgeOptions` overrides for an Envoy holding the test CA's `edge` identity."""
    from mesh.security.cli import EDGE, ensure_identities

    st = ensure_identities(session_pki(), [EDGE])
    return {
        "tls": True,
        "trust_domain": session_pki().trust_domain,
        "ca_cert_path": str(st.ca_cert_path),
        "cert_path": str(st.cert_path(EDGE)),
        "key_path": str(st.key_path(EDGE)),
        **overrides,
    }
