"""The mesh identities' certificates on Kubernetes: cert-manager issues and renews them.

Why: an instance's certificate lives `MESH_CERT_LIFETIME_S` (24 h). `meshctl up` and
the instances renew theirs themselves, from a CA key they can read; on a cluster no
pod holds a CA key, so until 7 Dec 2026 the certificates came from `meshctl k8s
secrets` and every pod's expired a day later unless someone re-ran it. Now each
identity (every service, `edge`, `consul`) has a cert-manager `Certificate` that
writes the Secret `<identity>-pki` and renews it when a third of its lifetime is
left, the rule the mesh's own renewers follow; the pods reload the mounted files
(the services by file watch, Envoy by SDS, the Consul agent by `auto_reload_config`).

The signer is an `Issuer` of cert-manager's CA type over the Secret `mesh-issuer`:
an intermediate CA that `meshctl k8s secrets` issues from the mesh's root and
re-issues past two thirds of its lifetime (`ISSUER_LIFETIME`). The root's key never
enters the cluster; the intermediate's does (it must, to sign), and it may sign
leaves only (path length 0). Every pod trusts the root (`ca.crt`), so certificates
of the old and the new intermediate are both accepted while they live.

A certificate says what `mesh.security.pki.issue` puts in a local one: the URI SAN
`spiffe://<trust domain>/svc/<identity>` (what caller policy reads), the DNS SAN
`<identity>.<trust domain>` (what clients verify), ECDSA P-256, client and server
auth; the edge's adds the names clients reach it by (`K8sOptions.edge_names`).
cert-manager names the files `tls.crt` (the leaf, then the intermediate), `tls.key`
and `ca.crt` (the root); the pods mount them as the mesh names them
(`<identity>.crt`, `<identity>.key`, `ca.crt`: `pki_volume`).

Limits: cert-manager (v1 API, its CA issuer) must be installed in the cluster; this
was rendered and checked offline, never applied to a cluster (none was available).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from base.addresses import is_ip_literal
from mesh.k8s.objects import Manifest, metadata
from mesh.k8s.options import K8sOptions, K8sOptionsError
from mesh.security.identity_files import EDGE_LOCAL_DNS, EDGE_LOCAL_IPS
from mesh.security.pki import common_name, dns_name, spiffe_id

CERT_MANAGER_API = "cert-manager.io/v1"
ISSUER = "mesh-issuer"  # the Issuer, and the Secret holding its CA
# The intermediate's lifetime (its key is in the cluster: kept short), re-issued by
# `meshctl k8s secrets` past two thirds of it.
ISSUER_LIFETIME_DAYS = 90
# cert-manager refuses a certificate shorter than an hour.
_MIN_LIFETIME_S = 3600


def pki_secret(identity: str) -> str:
    """The Secret cert-manager writes an identity's certificate into."""
    return f"{identity}-pki"


def pki_volume(name: str, identity: str, *, mode: int = 0o440) -> dict[str, Any]:
    """The identity's Secret as the files the mesh reads (cert-manager's keys renamed),
    readable by the pod's group only. Projected keys still follow the Secret's updates
    (only `subPath` mounts would not)."""
    items = [
        {"key": "tls.crt", "path": f"{identity}.crt"},
        {"key": "tls.key", "path": f"{identity}.key"},
        {"key": "ca.crt", "path": "ca.crt"},
    ]
    secret = {"secretName": pki_secret(identity), "defaultMode": mode, "items": items}
    return {"name": name, "secret": secret}


def issuer(options: K8sOptions) -> Manifest:
    """The namespace's CA issuer over the `mesh-issuer` Secret (`meshctl k8s secrets`)."""
    return {
        "apiVersion": CERT_MANAGER_API,
        "kind": "Issuer",
        "metadata": metadata(ISSUER, options),
        "spec": {"ca": {"secretName": ISSUER}},
    }


def _go_duration(seconds: int) -> str:
    return f"{seconds // 3600}h{seconds % 3600 // 60}m{seconds % 60}s"


def certificate(identity: str, options: K8sOptions, names: Sequence[str] = ()) -> Manifest:
    """`identity`'s certificate: 24 h (`options.cert_lifetime_s`), renewed with a third
    left, a new key each time; `names` are extra DNS names or IPs (the edge's)."""
    lifetime = int(options.cert_lifetime_s)
    if lifetime < _MIN_LIFETIME_S:
        raise K8sOptionsError(
            f"MESH_CERT_LIFETIME_S: {lifetime} s; cert-manager issues for an hour at least"
        )
    ips = [n for n in names if is_ip_literal(n)]
    spec: dict[str, Any] = {
        "secretName": pki_secret(identity),
        "secretTemplate": {"labels": metadata(identity, options)["labels"]},
        "duration": _go_duration(lifetime),
        "renewBefore": _go_duration(lifetime // 3),
        "subject": {"organizations": ["shop-mesh"]},
        "commonName": common_name(options.trust_domain, identity),
        "dnsNames": [dns_name(options.trust_domain, identity), *(n for n in names if n not in ips)],
        "uris": [spiffe_id(options.trust_domain, identity)],
        "privateKey": {
            "algorithm": "ECDSA",
            "size": 256,
            "encoding": "PKCS8",
            "rotationPolicy": "Always",
        },
        "usages": ["digital signature", "server auth", "client auth"],
        "issuerRef": {"name": ISSUER, "kind": "Issuer", "group": "cert-manager.io"},
    }
    if ips:
        spec["ipAddresses"] = ips
    return {
        "apiVersion": CERT_MANAGER_API,
        "kind": "Certificate",
        "metadata": metadata(pki_secret(identity), options),
        "spec": spec,
    }


def certificate_manifests(
    identities: Sequence[str], options: K8sOptions, edge: str
) -> list[Manifest]:
    """The issuer, then one certificate per identity (`edge` with `options.edge_names`)."""
    return [
        issuer(options),
        *(certificate(i, options, _edge_names(options) if i == edge else ()) for i in identities),
    ]


def _edge_names(options: K8sOptions) -> tuple[str, ...]:
    """The edge's extra names: what a local edge's certificate has (a port-forward to
    localhost), then the LoadBalancer's."""
    return (*EDGE_LOCAL_DNS, *EDGE_LOCAL_IPS, *options.edge_names)
