"""The mesh's certificates, built with `cryptography`: one CA, one leaf per identity.

A leaf names its service twice: a URI SAN `spiffe://<trust-domain>/svc/<service>`
(what the server's caller policy reads from the TLS auth context) and a DNS SAN
`<service>.<trust-domain>` (what a client verifies the callee by, through
`grpc.ssl_target_name_override`: gRPC Python checks DNS names, not URIs). Keys
are ECDSA P-256 (small, fast handshakes, what every TLS stack speaks).

Limits: no revocation (no CRL/OCSP); short lifetimes are the mitigation. Locally
the CA signs leaves directly; on Kubernetes an intermediate it signed issues them
(`create_intermediate`: cert-manager holds it, the root's key stays out of the
cluster). A user's own CA can be named instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from base.addresses import is_dns_label

_CN_MAX = 64  # ub-common-name (RFC 5280)
# Issued a little in the past, so a peer whose clock is slightly behind accepts it.
_BACKDATE = dt.timedelta(minutes=5)
SPIFFE_PATH = "/svc/"
CA_NAME = "ca"  # the CA's files in the PKI directory: ca.crt, ca.key


class PkiError(RuntimeError):
    """A certificate or key is missing, unreadable or not what the mesh expects."""


def spiffe_id(trust_domain: str, service: str) -> str:
    """`spiffe://<trust-domain>/svc/<service>`: the identity callers are authorised by."""
    return f"spiffe://{trust_domain}{SPIFFE_PATH}{service}"


def dns_name(trust_domain: str, service: str) -> str:
    """`<service>.<trust-domain>`: the name a client verifies the callee's certificate by."""
    return f"{service}.{trust_domain}"


def common_name(trust_domain: str, service: str) -> str:
    """The subject's CN: the DNS name, or the bare identity when that is over X.509's 64
    characters (nothing verifies by CN; the SANs carry the names)."""
    name = dns_name(trust_domain, service)
    return name if len(name) <= _CN_MAX else service


def service_of(identity: str, trust_domain: str) -> str | None:
    """The service named by a SPIFFE id of `trust_domain`, else None (foreign or malformed)."""
    prefix = f"spiffe://{trust_domain}{SPIFFE_PATH}"
    if not identity.startswith(prefix):
        return None
    name = identity[len(prefix) :]
    return name if name and "/" not in name else None


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A PEM certificate (chain) and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What `meshctl pki show` prints for one certificate."""

    subject: str
    identity: str  # the URI SAN ("" when none)
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    issuer: str
    is_ca: bool

    def remaining(self, now: dt.datetime | None = None) -> dt.timedelta:
        return self.not_after - (now or dt.datetime.now(dt.UTC))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop-mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: KeyPair | None,
    start: dt.datetime,
    end: dt.datetime,
    path_length: int,
) -> x509.Certificate:
    """A CA certificate for `key`: self-signed when `signer` is None, else signed by it."""
    signer_key: Any = key
    issuer = subject
    builder = x509.CertificateBuilder()
    if signer is not None:
        signer_key = serialization.load_pem_private_key(signer.key_pem, password=None)
        issuer = signer.certificate.subject
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
            critical=False,
        )
    return (
        builder.subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer_key, hashes.SHA256())
    )


def create_ca(
    trust_domain: str, lifetime: dt.timedelta, *, now: dt.datetime | None = None
) -> KeyPair:
    """A self-signed CA for `trust_domain` (its name constraints are not enforced: limits).

    Path length 1: it may sign one level of intermediate, a cluster's issuer
    (`create_intermediate`), below which only leaves. CAs made before 7 Dec 2026 have
    path length 0 (leaves only). gRPC's TLS (BoringSSL) does not hold a trust anchor to
    its own path length (measured: a CA forged below an intermediate of path length 1
    was accepted), so the intermediate's path length 0 is what stops a second level."""
    key = _private_key()
    start = (now or _now()) - _BACKDATE
    name = _ca_name(f"shop-mesh CA {trust_domain}")
    cert = _ca_certificate(name, key, None, start, start + _BACKDATE + lifetime, path_length=1)
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def create_intermediate(
    root: KeyPair, trust_domain: str, lifetime: dt.timedelta, *, now: dt.datetime | None = None
) -> KeyPair:
    """An intermediate CA signed by `root`, which signs leaves only (path length 0): the
    issuer a cluster holds (cert-manager's CA issuer) while the root's key stays out of
    it. Its `cert_pem` is the chain, intermediate then root, as such an issuer wants it.
    It never outlives the root; PkiError when the root may not sign a CA."""
    root_cert = root.certificate
    try:
        constraints = root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise PkiError("the root certificate is not a CA (no basic constraints)") from None
    if not constraints.ca or constraints.path_length == 0:
        raise PkiError(
            "the root CA may sign leaves only (path length 0, a CA made before 7 Dec 2026):"
            " an intermediate needs a new root"
        )
    key = _private_key()
    start = (now or _now()) - _BACKDATE
    end = min(start + _BACKDATE + lifetime, root_cert.not_valid_after_utc)
    name = _ca_name(f"shop-mesh issuer {trust_domain}")
    cert = _ca_certificate(name, key, root, start, end, path_length=0)
    chain = cert.public_bytes(serialization.Encoding.PEM) + root.cert_pem
    return KeyPair(chain, _key_pem(key))


def check_identity(service: str) -> None:
    """Raise PkiError unless `service` can name an identity.

    An identity is the first label of a DNS name (a space or '_' made a certificate no
    client would match: `meshctl pki issue 'a b'` issued one until 7 Dec 2026). Its
    files are `<identity>.crt`/`.key` in the PKI directory, so `ca` would write a leaf
    over the mesh CA (`meshctl pki issue ca` did until 7 Dec 2026, breaking every
    certificate). Limits: a CA of your own inside the directory under another name
    (MESH_CA_CERT_FILE) is guarded by the store, which knows its path.
    """
    if not is_dns_label(service):
        raise PkiError(
            f"identity {service!r} must be a DNS label: lower-case letters, digits and '-',"
            " at most 63, starting and ending with a letter or digit (it is the DNS name"
            " `<identity>.<trust domain>` and the end of a SPIFFE id)"
        )
    if service == CA_NAME:
        raise PkiError(
            f"identity {service!r} is reserved: its files ({CA_NAME}.crt, {CA_NAME}.key)"
            " are the mesh CA's; choose another name"
        )


def issue(
    ca: KeyPair,
    service: str,
    trust_domain: str,
    lifetime: dt.timedelta,
    *,
    extra_dns: Sequence[str] = (),
    extra_ips: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> KeyPair:
    """A leaf for `service`, signed by `ca`, valid for client and server auth.

    `extra_dns`/`extra_ips` add names a browser or curl checks (the edge's TLS
    listener: `localhost`, `127.0.0.1`). The leaf never outlives the CA.
    """
    check_identity(service)
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    # A user's own CA may be RSA or Ed25519.
    if not isinstance(
        ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise PkiError("the CA key type cannot sign certificates")
    key = _private_key()
    start = (now or _now()) - _BACKDATE
    end = min(start + _BACKDATE + lifetime, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(trust_domain, service)),
        x509.DNSName(dns_name(trust_domain, service)),
        *(x509.DNSName(d) for d in extra_dns),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in extra_ips),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop-mesh"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name(trust_domain, service)),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def describe(cert_pem: bytes) -> CertInfo:
    """The first certificate of `cert_pem`, summarised."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from None
    uris: list[str] = []
    dns: list[str] = []
    ips: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        identity=uris[0] if uris else "",
        dns_names=tuple(dns),
        ip_addresses=tuple(ips),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=cert.issuer.rfc4514_string(),
        is_ca=is_ca,
    )


def check_pair(pair: KeyPair) -> None:
    """Raise PkiError unless `pair.key_pem` is the private key of `pair.cert_pem`."""
    try:
        key = serialization.load_pem_private_key(pair.key_pem, password=None)
        cert = pair.certificate
    except (ValueError, TypeError) as exc:
        raise PkiError(f"unreadable certificate or key: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ) != cert.public_key().public_bytes(serialization.Encoding.PEM, public):
        raise PkiError("the key does not belong to the certificate")
