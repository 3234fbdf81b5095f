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
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interceptors.arity import for_channel
from interceptors.end_user import EndUser
from mesh.security.identity import MeshIdentity
from mesh.security.pki import KeyPair, create_ca, create_intermediate, issue
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings
from tests.support.end_user import OPERATOR, EndUserDefaults, SyncEndUserDefaults

# The identity a test client uses by default to reach each shop service: one its policy allows.
DEFAULT_CALLER: dict[str, str] = {
    "users": "edge",
    "orders": "edge",
    "inventory": "orders",
    "payments": "orders",
}

PEM = serialization.Encoding.PEM
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


def chained_pair(service: str, *, root: KeyPair | None = None) -> KeyPair:
    """A certificate of `service` as a cluster's issuer gives it (mesh/k8s/certificates.py):
    signed by an intermediate of `root` (default: the test CA), the leaf then the
    intermediate."""
    td = session_pki().trust_domain
    intermediate = create_intermediate(root or store().load_ca(), td, dt.timedelta(days=1))
    leaf = issue(intermediate, service, td, dt.timedelta(hours=1))
    return KeyPair(leaf.cert_pem + intermediate.certificate.public_bytes(PEM), leaf.key_pem)


def below_the_issuer_pair(service: str) -> KeyPair:
    """An attacker holding the cluster issuer's key makes itself a CA below it (which the
    issuer's path length 0 forbids) and a certificate of `service` from that: the leaf,
    the forged CA, the issuer."""
    td = session_pki().trust_domain
    intermediate = create_intermediate(store().load_ca(), td, dt.timedelta(days=1))
    issuer_key = serialization.load_pem_private_key(intermediate.key_pem, password=None)
    assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged CA")]))
        .issuer_name(intermediate.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    leaf = issue(KeyPair(forged.public_bytes(PEM), key_pem), service, td, dt.timedelta(hours=1))
    chain = forged.public_bytes(PEM) + intermediate.certificate.public_bytes(PEM)
    return KeyPair(leaf.cert_pem + chain, leaf.key_pem)


def ca_pem() -> bytes:
    return store().ca_bundle()


def credentials(pair_: KeyPair | None, root: bytes | None = None) -> grpc.ChannelCredentials:
    """Client credentials trusting `root` (default: the test CA) presenting `pair_` (or none)."""
    return grpc.ssl_channel_credentials(
        root_certificates=root or ca_pem(),
        private_key=pair_.key_pem if pair_ else None,
        certificate_chain=pair_.cert_pem if pair_ else None,
    )


def test_caller(full_method: str, callee: str) -> str:
    """An identity the contracts allow to call `full_method` (the edge for public methods)."""
    from mesh.security.policy import method_callers

    callers = method_callers(full_method if full_method.startswith("/") else f"/{full_method}")
    if not callers or "*" in callers:
        return DEFAULT_CALLER.get(callee, "orders")
    return "edge" if "edge" in callers else sorted(callers)[0]


class _PolicyChannelBase:
    """A channel that makes each call as an identity the method's policy allows.

    Tests call services directly, stub by stub, as the mesh's real callers would
    (inventory's reservations as orders, its catalogue as the edge...): one
    connection per caller identity, made on first use.
    """

    def __init__(self, make: Callable[[str], Any], callee: str) -> None:
        self._make = make
        self._callee = callee
        self._channels: dict[str, Any] = {}

    def _for(self, method: str) -> Any:
        caller = test_caller(method, self._callee)
        channel = self._channels.get(caller)
        if channel is None:
            channel = self._channels[caller] = self._make(caller)
        return channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).unary_unary(method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._for(method).stream_stream(method, *args, **kwargs)


class PolicyChannel(_PolicyChannelBase):
    """grpc.aio flavour."""

    async def close(self, grace: float | None = None) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close(grace)

    async def __aenter__(self) -> PolicyChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)


class SyncPolicyChannel(_PolicyChannelBase):
    """Blocking-API flavour."""

    def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()


def mtls_channel(
    address: str,
    callee: str,
    *,
    caller: str | None = None,
    pair_: KeyPair | None = None,
    options: list[tuple[str, Any]] | None = None,
    end_user: EndUser | None = OPERATOR,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `callee` at `address` as `caller` (or holding `pair_`); with
    neither, a `PolicyChannel` calling each method as an identity allowed to.

    Calls of methods that need an end user and carry none act for `end_user`
    (default: the admin `OPERATOR`, tests/support/end_user.py; None: none)."""
    name = f"{callee}.{session_pki().trust_domain}"
    args = [("grpc.ssl_target_name_override", name), *(options or [])]
    chain = [] if end_user is None else for_channel(EndUserDefaults(end_user))

    def make(who: str | None, presented: KeyPair | None = None) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            address,
            credentials(presented or pair(who or "orders")),
            options=args,
            interceptors=chain,
        )

    if caller is not None or pair_ is not None:
        return make(caller, pair_)
    return cast(grpc.aio.Channel, PolicyChannel(make, callee))  # duck-typed for stubs


def sync_mtls_channel(
    address: str, callee: str, *, end_user: EndUser | None = OPERATOR
) -> grpc.Channel:
    """The blocking-API twin of `mtls_channel` (each method as an allowed identity; unary
    calls of methods that need an end user act for `end_user`)."""
    name = f"{callee}.{session_pki().trust_domain}"

    def make(who: str) -> grpc.Channel:
        channel = grpc.secure_channel(
            address, credentials(pair(who)), options=[("grpc.ssl_target_name_override", name)]
        )
        if end_user is None:
            return channel
        return grpc.intercept_channel(channel, SyncEndUserDefaults(end_user))

    return cast(grpc.Channel, SyncPolicyChannel(make, callee))


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
    from mesh.api.options import EDGE
    from mesh.security.identity_files import ensure_identities

    st = ensure_identities(session_pki(), [EDGE])
    return {
        "tls": True,
        "trust_domain": session_pki().trust_domain,
        "ca_cert_path": str(st.ca_cert_path),
        "cert_path": str(st.cert_path(EDGE)),
        "key_path": str(st.key_path(EDGE)),
        **overrides,
    }
