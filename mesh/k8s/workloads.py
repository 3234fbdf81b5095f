"""Per service: a Deployment per track, its PDB and HPA, and the service's Services.

Probes. The gRPC port speaks mTLS only, and the kubelet's native `grpc:` probe
speaks plaintext h2c with no client certificate: it could never pass (and a
plaintext health port would be a hole in "mTLS on every hop"). So the probes use
the admin HTTP port, whose `/health` agrees with grpc.health.v1 (mesh/admin.py):
- readiness `/health`: 503 while a required dependency fails or the instance
  drains, so the pod leaves the Service's endpoints as it leaves the registry;
- liveness `/metrics`: answers while the process serves at all; not `/health`,
  or a database outage would restart every pod in a loop;
- startup `/metrics`, allowing a slow first start (migrations) before liveness.
Consul's own gRPC health check (with TLS, as the `consul` identity) remains what
decides whether an instance is in the registry, as in compose.

Registration: the pod registers its own IP (`status.podIP`) with the Consul client
agent on its node (`$(HOST_IP):8500`, the Helm chart's client DaemonSet), and its
name is its instance id (a restarted container keeps it and resumes its sagas).
"""

from __future__ import annotations

from typing import Any

from mesh.k8s.certificates import pki_volume
from mesh.k8s.objects import (
    Manifest,
    container_security,
    empty_dir,
    env_list,
    field_env,
    http_probe,
    metadata,
    pod_security,
    secret_env,
    secret_volume,
    service,
)
from mesh.k8s.options import (
    IDENTITY_LABEL,
    MESH_UID,
    NATS_SEED_FILE,
    NATS_SEED_MOUNT,
    PKI_MOUNT,
    K8sOptions,
)
from mesh.local.topology import ServiceSpec

# Ports inside a pod: a topology port of 0 ("a free port" locally) becomes these, as
# every pod has its own network namespace.
DEFAULT_GRPC_PORT = 50051
DEFAULT_ADMIN_PORT = 9100
CONSUL_HTTP_PORT = 8500
NATS_SERVICE = "nats"
NATS_CLIENT_PORT = 4222


def grpc_port(spec: ServiceSpec) -> int:
    return spec.grpc_port or DEFAULT_GRPC_PORT


def admin_port(spec: ServiceSpec) -> int:
    return spec.admin_port or DEFAULT_ADMIN_PORT


def nats_secret(identity: str) -> str:
    return f"{identity}-nats"


def db_secret(service_name: str) -> str:
    return f"{service_name}-db"


def database_env(service_name: str) -> str:
    return f"{service_name.upper().replace('-', '_')}_DATABASE_URL"


def service_labels(spec: ServiceSpec) -> dict[str, str]:
    return {"app": spec.name, "app.kubernetes.io/name": spec.name, IDENTITY_LABEL: spec.name}


def track_labels(spec: ServiceSpec, track: str, options: K8sOptions) -> dict[str, str]:
    return {**service_labels(spec), "track": track, "version": options.tag}


def _env(spec: ServiceSpec, track: str, options: K8sOptions, nats: bool) -> list[dict[str, Any]]:
    fixed = {
        **spec.env,
        "MESH_HOST": "0.0.0.0",
        "MESH_GRPC_PORT": str(grpc_port(spec)),
        "MESH_ADMIN_PORT": str(admin_port(spec)),
        "MESH_VERSION": options.tag,
        "MESH_TRACK": track,
        "MESH_REGISTRY": "consul",
        "MESH_PKI_DIR": PKI_MOUNT,
        "MESH_TRUST_DOMAIN": options.trust_domain,
        "MESH_DATA_DIR": "/data",
        "MESH_LOG_LEVEL": "INFO",
        "NATS_URL": f"nats://{NATS_SERVICE}:{NATS_CLIENT_PORT}",
        **({"NATS_NKEY_SEED_FILE": NATS_SEED_FILE} if nats else {}),
        # Every stream on each server of the JetStream cluster (survives losing one).
        "MESH_STREAM_REPLICAS": str(options.nats_replicas),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return [
        field_env("MESH_INSTANCE_ID", "metadata.name"),
        field_env("MESH_ADVERTISE_HOST", "status.podIP"),
        field_env("HOST_IP", "status.hostIP"),
        {"name": "CONSUL_HTTP_ADDR", "value": f"$(HOST_IP):{CONSUL_HTTP_PORT}"},
        secret_env(database_env(spec.name), db_secret(spec.name), "url"),
        *env_list(fixed),
    ]


def deployment(spec: ServiceSpec, track: str, options: K8sOptions, *, nats: bool) -> Manifest:
    """`nats`: the service has an event identity (its nkey seed Secret is mounted)."""
    labels = track_labels(spec, track, options)
    replicas = spec.instances if track == options.active_track else 0
    container = {
        "name": spec.name,
        "image": options.image_ref,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", spec.module],
        "ports": [
            {"name": "grpc", "containerPort": grpc_port(spec), "protocol": "TCP"},
            {"name": "admin", "containerPort": admin_port(spec), "protocol": "TCP"},
        ],
        "env": _env(spec, track, options, nats),
        "resources": options.resources.as_dict(),
        "readinessProbe": http_probe("/health", admin_port(spec)),
        "livenessProbe": http_probe("/metrics", admin_port(spec), period=10, failures=3),
        "startupProbe": http_probe("/metrics", admin_port(spec), period=2, failures=60),
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "pki", "mountPath": PKI_MOUNT, "readOnly": True},
            *(
                [{"name": "nats-seed", "mountPath": NATS_SEED_MOUNT, "readOnly": True}]
                if nats
                else []
            ),
            {"name": "data", "mountPath": "/data"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(f"{spec.name}-{track}", options, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": spec.name, "track": track}},
            # A new pod must be ready (registered, healthy) before an old one goes.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(admin_port(spec)),
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(MESH_UID),
                    # The server drains in-flight calls for MESH_DRAIN_GRACE_S (10 s).
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [
                        pki_volume("pki", spec.name),
                        *([secret_volume("nats-seed", nats_secret(spec.name))] if nats else []),
                        empty_dir("data", size="256Mi"),
                        empty_dir("tmp"),
                    ],
                },
            },
        },
    }


def pod_disruption_budget(spec: ServiceSpec, track: str, options: K8sOptions) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(f"{spec.name}-{track}", options, track_labels(spec, track, options)),
        "spec": {
            # One instance may go at a time; a single-instance service may be evicted
            # (a drain must not hang), its clients retry on another track or wait.
            "maxUnavailable": 1,
            "selector": {"matchLabels": {"app": spec.name, "track": track}},
        },
    }


def autoscaler(spec: ServiceSpec, track: str, options: K8sOptions) -> Manifest:
    name = f"{spec.name}-{track}"
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, options, track_labels(spec, track, options)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec.instances,
            "maxReplicas": spec.instances * options.hpa_max_factor,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": options.hpa_cpu_percent,
                        },
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def services(spec: ServiceSpec, options: K8sOptions) -> list[Manifest]:
    """One Service over every track (what a non-mesh client or a port-forward uses),
    and one per track (a release's smoke test reaches green alone). Mesh clients do
    not use them: they find instances in Consul and pick by the traffic policy."""
    ports = [("grpc", grpc_port(spec)), ("admin", admin_port(spec))]
    out = [service(spec.name, options, {"app": spec.name}, ports, labels=service_labels(spec))]
    for track in options.tracks:
        out.append(
            service(
                f"{spec.name}-{track}",
                options,
                {"app": spec.name, "track": track},
                ports,
                labels={**service_labels(spec), "track": track},
            )
        )
    return out


def service_manifests(spec: ServiceSpec, options: K8sOptions, *, nats: bool) -> list[Manifest]:
    out = services(spec, options)
    for track in options.tracks:
        out += [
            deployment(spec, track, options, nats=nats),
            pod_disruption_budget(spec, track, options),
            autoscaler(spec, track, options),
        ]
    return out
