"""NetworkPolicies that mirror the contracts' caller policy, plus a default deny.

The mesh's caller policy (`meshctl policy`, mesh/security/policy.py) authorises
each RPC by the caller's certificate; these policies repeat it one layer down, per
service: its gRPC port admits only pods whose identity label
(`shop-mesh/identity`) names a caller of at least one of its RPCs. Payments, whose
every RPC is `callers: orders`, admits orders' pods only. A service with an RPC
open to any mesh identity (`*`, or undeclared) admits every pod with an identity
label. NetworkPolicy is coarser than the mesh (per port, not per method: the edge
reaches inventory's port because it may call CheckAvailability, though not
ReserveItems); the mTLS caller policy stays what decides per method.

Besides the callers: the Consul client agents run each instance's gRPC health
check (TLS, the `consul` identity), Prometheus pods (label
`app.kubernetes.io/name: prometheus`) may scrape the admin port, and the edge may
fetch the end-user token keys (JWKS) from the token issuer's admin port when it
verifies tokens. Kubelet probes
come from the node and are not subject to these policies on common CNIs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mesh.api.options import ANY_CALLER, EDGE
from mesh.edge.jwt_authn import EdgeAuthOptions
from mesh.edge.model import EdgeModel
from mesh.k8s.edge import edge_options
from mesh.k8s.infra import (
    NATS_CLUSTER_PORT,
    POSTGRES_PORT,
    postgres_name,
)
from mesh.k8s.objects import Manifest, metadata
from mesh.k8s.options import IDENTITY_LABEL, K8sOptions
from mesh.k8s.workloads import NATS_CLIENT_PORT, NATS_SERVICE, admin_port, grpc_port
from mesh.local.topology import ServiceSpec
from mesh.security.policy import PolicyRow

# The Helm chart's labels of Consul's pods (servers and client agents).
CONSUL_LABELS = {"app": "consul"}
CONSUL_CLIENT_LABELS = {"app": "consul", "component": "client"}
PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus"}
ANY_IDENTITY: dict[str, Any] = {
    "podSelector": {"matchExpressions": [{"key": IDENTITY_LABEL, "operator": "Exists"}]}
}


def service_callers(
    rows: Iterable[PolicyRow], model: EdgeModel
) -> Mapping[str, frozenset[str] | None]:
    """Per mesh service (the registry name, `orders`): the identities that may call at
    least one of its RPCs; None when some RPC admits any mesh identity."""
    cluster_of = {s.full_name: s.cluster for s in model.services}
    out: dict[str, frozenset[str] | None] = {}
    for row in rows:
        cluster = cluster_of.get(row.service)
        if cluster is None:
            continue
        if row.callers is None or ANY_CALLER in row.callers:
            out[cluster] = None
        elif cluster not in out or out[cluster] is not None:
            out[cluster] = (out.get(cluster) or frozenset()) | row.callers
    return out


def _identity_peer(names: Iterable[str]) -> dict[str, Any]:
    return {
        "podSelector": {
            "matchExpressions": [{"key": IDENTITY_LABEL, "operator": "In", "values": sorted(names)}]
        }
    }


def _policy(
    name: str, options: K8sOptions, selector: Mapping[str, str], rules: list[dict[str, Any]]
) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, options),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def _port(port: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port}]


def service_policy(
    spec: ServiceSpec,
    callers: frozenset[str] | None,
    options: K8sOptions,
    jwks_service: str | None = None,
) -> Manifest:
    """Who may reach `spec`'s ports: its callers' identities on gRPC, Prometheus on the
    admin port, and the edge there too when `spec` is the end users' token issuer
    (`jwks_service`: the edge's `jwt_authn` fetches its keys from that port)."""
    grpc_from = [ANY_IDENTITY] if callers is None else [_identity_peer(callers)] if callers else []
    admin_from = [{"podSelector": {"matchLabels": PROMETHEUS_LABELS}}]
    if spec.name == jwks_service:
        admin_from.append(_identity_peer([EDGE]))
    rules = [
        {"from": [*grpc_from, {"podSelector": {"matchLabels": CONSUL_CLIENT_LABELS}}],
         "ports": _port(grpc_port(spec))},
        {"from": admin_from, "ports": _port(admin_port(spec))},
    ]  # fmt: skip
    return _policy(f"{spec.name}-callers", options, {"app": spec.name}, rules)


def network_policies(
    services: Iterable[ServiceSpec],
    rows: Iterable[PolicyRow],
    model: EdgeModel,
    options: K8sOptions,
    auth: EdgeAuthOptions,
) -> list[Manifest]:
    specs = list(services)
    issuer = auth.jwks_service if auth.enabled and auth.jwks_service else None
    callers = service_callers(rows, model)
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata("default-deny-ingress", options),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    out = [deny]
    # A service no contract names (no RPC in the descriptor set) admits no caller.
    out += [service_policy(s, callers.get(s.name, frozenset()), options, issuer) for s in specs]
    out.append(
        _policy(
            "edge-listeners",
            options,
            {"app": "edge"},
            # Anyone: the public TLS listener (not the plaintext one, not the admin).
            [{"ports": _port(edge_options(options, auth).tls_listen_port)}],
        )
    )
    out.append(
        _policy(
            "nats-clients",
            options,
            {"app": NATS_SERVICE},
            [
                {"from": [ANY_IDENTITY], "ports": _port(NATS_CLIENT_PORT)},
                {
                    "from": [{"podSelector": {"matchLabels": {"app": NATS_SERVICE}}}],
                    "ports": _port(NATS_CLUSTER_PORT),
                },
            ],
        )
    )
    for s in specs:
        out.append(
            _policy(
                postgres_name(s),
                options,
                {"app": postgres_name(s)},
                [{"from": [_identity_peer([s.name])], "ports": _port(POSTGRES_PORT)}],
            )
        )
    # Consul (installed by Helm into the same namespace): every mesh pod talks to the
    # agents' HTTP API, and the agents and servers to each other (gossip, RPC).
    out.append(
        _policy(
            "consul",
            options,
            CONSUL_LABELS,
            [{"from": [ANY_IDENTITY, {"podSelector": {"matchLabels": CONSUL_LABELS}}]}],
        )
    )
    return out
