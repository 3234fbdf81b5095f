"""cert-manager's CA issuer as far as a pod sees it: a rendered `Certificate` in, its Secret out.

No cluster (hence no cert-manager) runs here. What the mesh relies on is the Secret
cert-manager's CA issuer writes for a `Certificate` (cert-manager.io docs, "CA" issuer
and "Certificate resource"): `tls.key` a new key of `spec.privateKey`'s algorithm,
`tls.crt` the leaf signed by the issuer's key followed by the issuer's chain (the
root left out), `ca.crt` the root of the issuer Secret's chain. The leaf carries
what the spec asks: `commonName`, `subject.organizations`, `dnsNames`, `uris`,
`ipAddresses`, `duration`, `usages`. Built from the rendered manifest, so a name
the mesh verifies that the manifest lacks fails the tests that use it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_USAGES = {"server auth": ExtendedKeyUsageOID.SERVER_AUTH,
           "client auth": ExtendedKeyUsageOID.CLIENT_AUTH}  # fmt: skip


def go_duration(text: str) -> dt.timedelta:
    """`24h0m0s` (the form mesh/k8s/certificates.py writes)."""
    match = re.fullmatch(r"(\d+)h(\d+)m(\d+)s", text)
    assert match, text
    hours, minutes, seconds = (int(g) for g in match.groups())
    return dt.timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def issue(
    certificate: dict[str, Any], issuer: dict[str, str], *, now: dt.datetime | None = None
) -> dict[str, str]:
    """The Secret data cert-manager writes for `certificate`, signed by the CA of the
    issuer Secret's data `issuer` (`tls.crt` chain, `tls.key`, `ca.crt`)."""
    spec = certificate["spec"]
    assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
    chain = _certs(issuer["tls.crt"])
    signer = serialization.load_pem_private_key(issuer["tls.key"].encode(), password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    start = now or dt.datetime.now(dt.UTC)
    subject = [
        *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)
          for o in spec.get("subject", {}).get("organizations", [])),
        x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"]),
    ]  # fmt: skip
    sans: list[x509.GeneralName] = [
        *(x509.DNSName(n) for n in spec.get("dnsNames", [])),
        *(x509.UniformResourceIdentifier(u) for u in spec.get("uris", [])),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in spec.get("ipAddresses", [])),
    ]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(chain[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + go_duration(spec["duration"]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature="digital signature" in spec["usages"],
                content_commitment=False,
                key_encipherment="key encipherment" in spec["usages"],
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
            x509.ExtendedKeyUsage([_USAGES[u] for u in spec["usages"] if u in _USAGES]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    not_root = [c for c in chain if c.issuer != c.subject]
    return {
        "tls.crt": b"".join(c.public_bytes(pem) for c in [leaf, *not_root]).decode(),
        "tls.key": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "ca.crt": issuer["ca.crt"],
    }


def issue_all(rendered: list[dict[str, Any]], issuer: dict[str, str]) -> dict[str, dict[str, str]]:
    """Every rendered Certificate's Secret (name -> data), as cert-manager would make them."""
    return {
        d["spec"]["secretName"]: issue(d, issuer) for d in rendered if d["kind"] == "Certificate"
    }


def mount(volume: dict[str, Any], data: dict[str, str], where: Path) -> Path:
    """A Secret volume's files as the kubelet writes them: its `items` under their
    paths, else every key under its own name."""
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        (where / item["path"]).write_text(data[item["key"]])
    return where
