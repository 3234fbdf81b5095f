"""`meshctl up`'s PKI: the CA and certificates made before anything starts.

`local_pki(run_dir, env, services)` creates the CA (unless there is one) and a
certificate for each service and for the edge under `<run_dir>/pki` (or
MESH_PKI_DIR), and says what the children's environment and the Envoy config
need: the directory (absolute, so a child's working directory does not
matter) and the edge's certificate paths, and the renewer `up` runs to keep the
edge's certificate files valid while the mesh runs (the services renew their own in
memory). With MESH_TLS=off it does nothing (every process then warns at start).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mesh.api.options import EDGE
from mesh.security.identity_files import IdentityFileRenewer, ensure_identities
from mesh.settings import security_from_env


@dataclasses.dataclass(frozen=True, slots=True)
class LocalPki:
    env: dict[str, str]
    """Added to every child's environment."""
    edge_options: dict[str, Any]
    """`EdgeOptions` overrides: TLS on/off, trust domain, certificate paths."""
    renewer: IdentityFileRenewer | None = None
    """Keeps the edge's certificate files valid while the mesh runs (Envoy reads them)."""


def local_pki(run_dir: Path, env: Mapping[str, str], services: Sequence[str]) -> LocalPki:
    security = security_from_env(env)
    if not env.get("MESH_PKI_DIR"):
        security = dataclasses.replace(security, pki_dir=str(run_dir / "pki"))
    if not security.tls:
        return LocalPki({}, {"tls": False})
    store = ensure_identities(security, [*services, EDGE])
    return LocalPki(
        {"MESH_PKI_DIR": str(store.dir.resolve())},
        {
            "tls": True,
            "trust_domain": security.trust_domain,
            "ca_cert_path": str(store.ca_cert_path.resolve()),
            "cert_path": str(store.cert_path(EDGE).resolve()),
            "key_path": str(store.key_path(EDGE).resolve()),
        },
        IdentityFileRenewer(
            store, [EDGE], say=lambda line: print(f"pki         | {line}", flush=True)
        ),
    )
