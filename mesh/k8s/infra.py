"""What the services stand on: NATS (JetStream cluster), PostgreSQL per service, Consul.

NATS: a StatefulSet of `nats_replicas` (3) servers behind a headless Service, full
mesh cluster routes between the stable pod names, JetStream on a PVC per server
(RAFT replication across the three). Authorization is the one `meshctl up` renders
(mesh/events/nats_auth.py: one nkey per service, per-subject permissions); the
users block holds the public keys made with the seeds, so it comes from the
`nats-auth` Secret written by `meshctl k8s secrets` and is `include`d by the
rendered config. Routes are not authenticated: the NetworkPolicy admits the
cluster port from NATS pods only (a limit: use route TLS for a hostile network).

PostgreSQL: one single-instance StatefulSet per service (its database, user and
password from the `<service>-db` Secret), enough to run the shop; production
wants an operator (CloudNativePG, Zalando's) with replicas and backups: point
`<SERVICE>_DATABASE_URL` at its Service through the same Secret key `url`.

Consul: values for the official Helm chart (hashicorp/consul), not a manifest:
3 servers, a client agent per node (services register with the agent on their
node, which runs their gRPC health checks over mTLS as the `consul` identity).
"""

from __future__ import annotations

import json
from typing import Any

from mesh.k8s.certificates import pki_secret
from mesh.k8s.objects import (
    Manifest,
    container_security,
    empty_dir,
    http_probe,
    metadata,
    pod_security,
    secret_env,
    secret_volume,
    service,
)
from mesh.k8s.options import K8sOptions
from mesh.k8s.workloads import NATS_CLIENT_PORT, NATS_SERVICE, db_secret
from mesh.local.topology import ServiceSpec

NATS_HEADLESS = "nats-headless"
NATS_CLUSTER_PORT = 6222
NATS_MONITOR_PORT = 8222
NATS_AUTH_SECRET = "nats-auth"
NATS_AUTH_FILE = "auth.conf"
NATS_UID = 1000  # any non-root uid: the alpine image needs none of its own
POSTGRES_PORT = 5432
POSTGRES_UID = 70  # the postgres:*-alpine image's `postgres` user
CONSUL_IDENTITY = "consul"


def _volume_claim(name: str, size: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def nats_config(options: K8sOptions) -> str:
    routes = ", ".join(
        f"nats://nats-{i}.{NATS_HEADLESS}.{options.namespace}.svc:{NATS_CLUSTER_PORT}"
        for i in range(options.nats_replicas)
    )
    return "\n".join(
        [
            "# Rendered by `meshctl k8s render` (mesh/k8s/infra.py); do not edit.",
            f"port: {NATS_CLIENT_PORT}",
            f"http_port: {NATS_MONITOR_PORT}",
            "server_name: $POD_NAME",
            "lame_duck_duration: 30s",
            "jetstream {",
            "  store_dir: /data",
            f"  max_file_store: {options.nats_storage.removesuffix('i')}",
            "}",
            "cluster {",
            "  name: shop-mesh",
            f"  port: {NATS_CLUSTER_PORT}",
            f"  routes: [{routes}]",
            "}",
            "# authorization { users: [...] } from the nats-auth Secret (`meshctl k8s secrets`)",
            f"include ./auth/{NATS_AUTH_FILE}",
            "",
        ]
    )


def nats_manifests(options: K8sOptions) -> list[Manifest]:
    labels = {"app": NATS_SERVICE, "app.kubernetes.io/name": NATS_SERVICE}
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata("nats-config", options, labels),
        "data": {"nats.conf": nats_config(options)},
    }
    container = {
        "name": "nats",
        "image": options.nats_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["nats-server", "--config", "/etc/nats/nats.conf"],
        "ports": [
            {"name": "client", "containerPort": NATS_CLIENT_PORT, "protocol": "TCP"},
            {"name": "cluster", "containerPort": NATS_CLUSTER_PORT, "protocol": "TCP"},
            {"name": "monitor", "containerPort": NATS_MONITOR_PORT, "protocol": "TCP"},
        ],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        # Ready once JetStream is up and the server is current with its peers.
        "readinessProbe": http_probe("/healthz?js-enabled-only=true", NATS_MONITOR_PORT),
        "livenessProbe": http_probe("/healthz?js-enabled-only=true", NATS_MONITOR_PORT, period=10),
        "startupProbe": http_probe("/healthz", NATS_MONITOR_PORT, period=2, failures=90),
        # Lame duck mode: clients move to another server before this one stops.
        "lifecycle": {"preStop": {"exec": {"command": ["nats-server", "--signal", "ldm=1"]}}},
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/nats", "readOnly": True},
            {"name": "auth", "mountPath": "/etc/nats/auth", "readOnly": True},
            {"name": "data", "mountPath": "/data"},
        ],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata("nats", options, labels),
        "spec": {
            "serviceName": NATS_HEADLESS,
            "replicas": options.nats_replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": NATS_SERVICE}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(NATS_UID),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "nats-config"}},
                        secret_volume("auth", NATS_AUTH_SECRET),
                    ],
                    # One server per node: losing a node loses one RAFT peer, not two.
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": {"app": NATS_SERVICE}},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                },
            },
            "volumeClaimTemplates": [_volume_claim("data", options.nats_storage)],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata("nats", options, labels),
        # JetStream keeps a quorum (2 of 3) through a voluntary disruption.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": NATS_SERVICE}}},
    }
    ports = [("client", NATS_CLIENT_PORT), ("cluster", NATS_CLUSTER_PORT)]
    return [
        config,
        service(NATS_HEADLESS, options, {"app": NATS_SERVICE}, ports, labels=labels, headless=True),
        service(NATS_SERVICE, options, {"app": NATS_SERVICE}, ports[:1], labels=labels),
        statefulset,
        pdb,
    ]


def postgres_name(spec: ServiceSpec) -> str:
    return f"{spec.name}-postgres"


def postgres_manifests(spec: ServiceSpec, options: K8sOptions) -> list[Manifest]:
    name = postgres_name(spec)
    labels = {"app": name, "app.kubernetes.io/name": "postgres", "shop-mesh/database-of": spec.name}
    secret = db_secret(spec.name)
    ready = ["pg_isready", "-h", "127.0.0.1", "-U", "$(POSTGRES_USER)", "-d", "$(POSTGRES_DB)"]
    container = {
        "name": "postgres",
        "image": options.postgres_image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
        "env": [
            secret_env("POSTGRES_USER", secret, "username"),
            secret_env("POSTGRES_PASSWORD", secret, "password"),
            secret_env("POSTGRES_DB", secret, "database"),
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "readinessProbe": {"exec": {"command": ready}, "periodSeconds": 5, "timeoutSeconds": 3},
        "livenessProbe": {"exec": {"command": ready}, "periodSeconds": 10, "timeoutSeconds": 3},
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name, options, labels),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(POSTGRES_UID),
                    "containers": [container],
                    "volumes": [empty_dir("run", memory=True, size="1Mi"), empty_dir("tmp")],
                },
            },
            "volumeClaimTemplates": [_volume_claim("data", options.postgres_storage)],
        },
    }
    return [
        service(
            name,
            options,
            {"app": name},
            [("postgres", POSTGRES_PORT)],
            labels=labels,
            headless=True,
        ),
        statefulset,
    ]


def consul_values(options: K8sOptions) -> dict[str, Any]:
    """Values for `helm install consul hashicorp/consul -f consul-values.yaml`.

    Client agents (a DaemonSet, HTTP on each node's port 8500) are what the services
    register with; the agents' gRPC health checks speak TLS with the `consul`
    identity's certificate, like compose's dev agent (`tls { defaults {...} }`): the
    Secret cert-manager renews (mesh/k8s/certificates.py), under its own key names,
    re-read when it changes (`auto_reload_config`, which watches the TLS files too).
    Service mesh (Connect) stays off: the mesh is proxyless.
    """
    files = f"/consul/userconfig/{pki_secret(CONSUL_IDENTITY)}"
    tls = {
        "auto_reload_config": True,
        "tls": {
            "defaults": {
                "ca_file": f"{files}/ca.crt",
                "cert_file": f"{files}/tls.crt",
                "key_file": f"{files}/tls.key",
            }
        },
    }
    return {
        # The version compose runs (its dev agent); chart 1.x.
        "global": {"name": "consul", "datacenter": "dc1", "image": "hashicorp/consul:1.20"},
        "server": {"replicas": 3, "storage": "10Gi"},
        "client": {
            "enabled": True,
            "grpc": True,
            "extraVolumes": [
                {"type": "secret", "name": pki_secret(CONSUL_IDENTITY), "load": False}
            ],
            "extraConfig": json.dumps(tls),
        },
        "ui": {"enabled": True},
        "connectInject": {"enabled": False},
        "meshGateway": {"enabled": False},
        "ingressGateways": {"enabled": False},
        "terminatingGateways": {"enabled": False},
    }
