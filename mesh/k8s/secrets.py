"""The Secrets the manifests reference, with their key material: never in the repository.

`meshctl k8s secrets --material DIR` keeps the material in DIR (0700; default
`.run/k8s`, git-ignored with the rest of `.run/`) and writes `DIR/secrets.yaml`
(0600) for `kubectl apply -f`:

- `<identity>-pki` per mesh identity (each service, `edge`, `consul`):
  `ca.crt`, `<identity>.crt`, `<identity>.key` from the mesh PKI in `DIR/pki`
  (`meshctl pki`'s store: the CA is created once, a certificate re-issued when
  missing or past two thirds of its lifetime; MESH_CERT_LIFETIME_S sets it). The CA
  key stays in DIR: no pod holds it, so instances load their certificate from the
  Secret and reload it when the kubelet updates the mounted files;
- `<identity>-nats` per event identity: its nkey seed (`seed`), and `nats-auth`:
  the `authorization` block with the public keys and permissions (the one
  `meshctl up` renders), which the NATS config includes;
- `<service>-db` per service: database, username, password and the `url` the
  service reads as `<SERVICE>_DATABASE_URL`.

Running it again keeps the CA, the seeds and the passwords (material in DIR) and
renews certificates that need it: that is the rotation (apply again; the pods
reload certificates by file watch; NATS needs `nats-server --signal reload` or a
rollout after a seed change). Limit: the CA key lives where this command runs;
with a CA on a cluster (cert-manager) write the same Secret names from it instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from base.settings import default_of
from mesh.api.options import EDGE
from mesh.events.nats_auth import MESHCTL, EventIdentity, new_user_seed, public_key, render_users
from mesh.events.streams import default_streams
from mesh.events.types import EventTypes
from mesh.k8s.infra import (
    CONSUL_IDENTITY,
    NATS_AUTH_FILE,
    NATS_AUTH_SECRET,
    POSTGRES_PORT,
    postgres_name,
)
from mesh.k8s.objects import Manifest, dump_all, metadata
from mesh.k8s.options import K8sOptions
from mesh.k8s.workloads import db_secret, nats_secret, pki_secret
from mesh.local.topology import ServiceSpec
from mesh.security.identity_files import ensure_identities, issue_identity
from mesh.security.store import write_atomically
from mesh.settings import Settings, security_from_env

SECRETS_FILE = "secrets.yaml"
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


def _kept(path: Path, make: bytes) -> bytes:
    """The file's content, or `make` written there first (0600)."""
    if path.is_file():
        return path.read_bytes().strip()
    write_atomically(path, make + b"\n", 0o600)
    return make


def pki_secrets(
    identities: Sequence[str],
    options: K8sOptions,
    material: Path,
    edge_names: Sequence[str] = (),
) -> list[Manifest]:
    """`edge_names`: DNS names (or IPs) clients reach the edge's LoadBalancer by; given,
    the edge's certificate is re-issued with them (besides localhost/127.0.0.1)."""
    env = {**os.environ, "MESH_PKI_DIR": str(material / "pki")}
    security = dataclasses.replace(security_from_env(env), trust_domain=options.trust_domain)
    store = ensure_identities(security, identities)
    if edge_names:
        ips = [n for n in edge_names if _is_ip(n)]
        dns = [n for n in edge_names if not _is_ip(n)]
        issue_identity(store, EDGE, dns, ips)
    ca = store.ca_cert_path.read_text()
    out = []
    for name in identities:
        pair = store.load(name)
        data = {
            "ca.crt": ca,
            f"{name}.crt": pair.cert_pem.decode(),
            f"{name}.key": pair.key_pem.decode(),
        }
        out.append(_secret(pki_secret(name), options, data))
    return out


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def nats_secrets(
    identities: Sequence[EventIdentity],
    types: EventTypes | None,
    options: K8sOptions,
    material: Path,
) -> list[Manifest]:
    streams = default_streams(
        types.domains if types is not None else (),
        max_bytes=default_of(Settings, "stream_max_bytes"),
        max_msgs=default_of(Settings, "stream_max_msgs"),
    )
    (material / "nats").mkdir(mode=0o700, exist_ok=True)
    out: list[Manifest] = []
    users: list[tuple[EventIdentity, str]] = []
    deployed = [i for i in identities if not i.local_only]  # not an example's
    for ident in (*deployed, MESHCTL):
        seed = _kept(material / "nats" / f"{ident.name}.nk", new_user_seed())
        users.append((ident, public_key(seed)))
        out.append(_secret(nats_secret(ident.name), options, {"seed": seed.decode()}))
    auth = "\n".join(["authorization: {", *render_users(users, list(streams)), "}", ""])
    out.append(_secret(NATS_AUTH_SECRET, options, {NATS_AUTH_FILE: auth}))
    return out


def database_secrets(
    services: Sequence[ServiceSpec], options: K8sOptions, material: Path
) -> list[Manifest]:
    (material / "db").mkdir(mode=0o700, exist_ok=True)
    out = []
    for spec in services:
        password = _kept(material / "db" / f"{spec.name}.password", secrets.token_hex(24).encode())
        user = db = spec.name.replace("-", "_")
        url = f"postgresql://{user}:{password.decode()}@{postgres_name(spec)}:{POSTGRES_PORT}/{db}"
        data = {"database": db, "username": user, "password": password.decode(), "url": url}
        out.append(_secret(db_secret(spec.name), options, data))
    return out


def write_secrets(
    services: Sequence[ServiceSpec],
    event_identities: Sequence[EventIdentity],
    types: EventTypes | None,
    options: K8sOptions,
    material: Path,
    edge_names: Sequence[str] = (),
) -> Path:
    """Make or reuse the material in `material` and write its secrets.yaml (0600)."""
    material.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(material, 0o700)
    identities = [*(s.name for s in services), EDGE, CONSUL_IDENTITY]
    docs = [
        *pki_secrets(identities, options, material, edge_names),
        *(nats_secrets(event_identities, types, options, material) if event_identities else []),
        *database_secrets(services, options, material),
    ]
    path = material / SECRETS_FILE
    body = HEADER + dump_all(docs)
    write_atomically(path, body.encode(), 0o600)
    return path
