"""The Secrets the manifests reference, with their key material: never in the repository.

`meshctl k8s secrets --material DIR` keeps the material in DIR (0700; default
`.run/k8s`, git-ignored with the rest of `.run/`) and writes `DIR/secrets.yaml`
(0600) for `kubectl apply -f`:

- `mesh-issuer`: the intermediate CA cert-manager issues every identity's
  certificate with (mesh/k8s/certificates.py: the `Certificate`s are rendered, the
  `<identity>-pki` Secrets are cert-manager's), signed by the mesh's root CA in
  `DIR/pki` (`meshctl pki`'s store, created once). The root's key stays in DIR;
  the intermediate is re-issued past two thirds of its 90 days;
- `<identity>-nats` per event identity: its nkey seed (`seed`), and `nats-auth`:
  the `authorization` block with the public keys and permissions (the one
  `meshctl up` renders), which the NATS config includes;
- `<service>-db` per service: database, username, password and the `url` the
  service reads as `<SERVICE>_DATABASE_URL`.

Running it again keeps the root, the seeds and the passwords (material in DIR) and
renews the intermediate when it needs it: run it and apply again at least every two
months (cert-manager renews the identities' certificates by itself, every 16 h by
default; NATS needs `nats-server --signal reload` or a rollout after a seed change).
Limit: the root's key lives where this command runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from mesh.events.nats_auth import EventIdentity
from mesh.events.nats_credentials import CredentialsError, keep_credentials, kept_secret
from mesh.events.streams import StreamSpec
from mesh.k8s.certificates import ISSUER, ISSUER_LIFETIME_DAYS
from mesh.k8s.infra import (
    NATS_AUTH_FILE,
    NATS_AUTH_SECRET,
    POSTGRES_PORT,
    postgres_name,
)
from mesh.k8s.objects import Manifest, dump_all, metadata
from mesh.k8s.options import K8sOptions
from mesh.k8s.workloads import db_secret, nats_secret
from mesh.local.topology import ServiceSpec
from mesh.private_dir import private_dir
from mesh.security.identity_files import renewal_due
from mesh.security.pki import KeyPair, PkiError, check_pair, create_intermediate, describe
from mesh.security.store import PkiStore, write_atomically
from mesh.settings import security_from_env

SECRETS_FILE = "secrets.yaml"
_PASSWORD = re.compile(rb"[A-Za-z0-9._~-]+")
HEADER = (
    "# Written by `meshctl k8s secrets`: KEY MATERIAL. Never commit this file.\n"
    "# Apply with `kubectl apply -f`; the material it was made from stays beside it.\n"
)


def _secret(name: str, options: K8sOptions, data: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(name, options),
        "stringData": data,
    }


def issuer_secret(options: K8sOptions, material: Path) -> Manifest:
    """The `mesh-issuer` Secret: the intermediate CA cert-manager signs the identities'
    certificates with (`tls.crt` the chain, intermediate then root; `ca.crt` the root,
    which cert-manager copies into every issued Secret). The root stays in
    `DIR/pki`; the intermediate is kept in `DIR/issuer` and re-issued when missing,
    unreadable, not the current root's, or past two thirds of `ISSUER_LIFETIME_DAYS`."""
    env = {**os.environ, "MESH_PKI_DIR": str(material / "pki")}
    security = dataclasses.replace(security_from_env(env), trust_domain=options.trust_domain)
    store = PkiStore(security)
    store.init_ca()
    root = store.load_ca()
    lifetime = dt.timedelta(days=ISSUER_LIFETIME_DAYS)
    pair = _current_issuer(material / "issuer", root, lifetime)
    if pair is None:
        pair = create_intermediate(root, options.trust_domain, lifetime)
        (material / "issuer").mkdir(mode=0o700, exist_ok=True)
        write_atomically(material / "issuer" / "issuer.key", pair.key_pem, 0o600)
        write_atomically(material / "issuer" / "issuer.crt", pair.cert_pem, 0o644)
    data = {
        "tls.crt": pair.cert_pem.decode(),
        "tls.key": pair.key_pem.decode(),
        "ca.crt": root.cert_pem.decode(),
    }
    return {**_secret(ISSUER, options, data), "type": "kubernetes.io/tls"}


def _current_issuer(directory: Path, root: KeyPair, lifetime: dt.timedelta) -> KeyPair | None:
    """The kept intermediate, if it is still good to hand to cert-manager."""
    try:
        pair = KeyPair(
            (directory / "issuer.crt").read_bytes(), (directory / "issuer.key").read_bytes()
        )
        check_pair(pair)
        pair.certificate.verify_directly_issued_by(root.certificate)
        due = renewal_due(describe(pair.cert_pem), lifetime)
    except (OSError, PkiError, ValueError, TypeError, InvalidSignature):
        return None  # missing, unreadable, or another root's
    return pair if due > dt.datetime.now(dt.UTC) else None


def nats_secrets(
    identities: Sequence[EventIdentity],
    streams: Sequence[StreamSpec],
    options: K8sOptions,
    material: Path,
) -> list[Manifest]:
    kept = keep_credentials(material / "nats", identities, streams)
    out = [_secret(nats_secret(name), options, {"seed": seed.decode()})
           for name, seed in kept.seeds.items()]  # fmt: skip
    out.append(_secret(NATS_AUTH_SECRET, options, {NATS_AUTH_FILE: kept.authorization}))
    return out


def _kept_password(path: Path) -> bytes:
    """The password kept in `path` (made when missing), refused, naming the file, unless
    it is letters, digits and `._~-`: it goes into the `url` unescaped, an empty one was
    rendered as `password: ''` and one that is not text was a UnicodeDecodeError."""
    password = kept_secret(path, secrets.token_hex(24).encode())
    if not _PASSWORD.fullmatch(password):
        problem = "empty" if not password else "not letters, digits and . _ ~ -"
        raise CredentialsError(
            f"{path}: the password is {problem}; write one, or remove the file to make"
            " one (the database's password must then be changed to it)"
        )
    return password


def database_secrets(
    services: Sequence[ServiceSpec], options: K8sOptions, material: Path
) -> list[Manifest]:
    private_dir(material / "db", narrow=True)
    out = []
    for spec in services:
        password = _kept_password(material / "db" / f"{spec.name}.password")
        user = db = spec.name.replace("-", "_")
        url = f"postgresql://{user}:{password.decode()}@{postgres_name(spec)}:{POSTGRES_PORT}/{db}"
        data = {"database": db, "username": user, "password": password.decode(), "url": url}
        out.append(_secret(db_secret(spec.name), options, data))
    return out


def write_secrets(
    services: Sequence[ServiceSpec],
    event_identities: Sequence[EventIdentity],
    streams: Sequence[StreamSpec],
    options: K8sOptions,
    material: Path,
) -> Path:
    """Make or reuse the material in `material` and write its secrets.yaml (0600)."""
    private_dir(material, narrow=True)  # as `events credentials` does its directory
    docs = [
        issuer_secret(options, material),
        *(nats_secrets(event_identities, streams, options, material) if event_identities else []),
        *database_secrets(services, options, material),
    ]
    path = material / SECRETS_FILE
    body = HEADER + dump_all(docs)
    write_atomically(path, body.encode(), 0o600)
    return path
