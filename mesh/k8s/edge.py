"""The Envoy edge on Kubernetes: one pod of Envoy and its companion, config in a ConfigMap.

The Envoy config is the one `envoy/envoy.yaml` is rendered from (mesh/edge/), with
the compose paths and one difference: the companion (`meshctl edge serve`: the
edge meta server, and the endpoint sync that writes Envoy's EDS files from Consul)
runs in the same pod, so Envoy reaches it on 127.0.0.1 and reads the EDS files
from a shared emptyDir. Envoy's admin listens on 127.0.0.1 only: it stops the edge
and rewrites its runtime, and a NetworkPolicy protects nothing on a cluster whose
network plugin does not enforce it. The kubelet probes a listener of its own instead
(`EDGE_HEALTH_PORT`, `GET /ready` and nothing else: Envoy's health_check filter, 503
once draining), as Envoy Gateway does; the edge's NetworkPolicy admits only the TLS
listener (the kubelet's probes are not subject to it).

The Service exposes the TLS listener (8443; its certificate is the `edge-pki` Secret
cert-manager renews, mesh/k8s/certificates.py) as a LoadBalancer; the plaintext 8080
listener is not exposed (compose publishes it on the host's loopback only).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from mesh.api.options import EDGE
from mesh.edge.browsers import NO_CORS, EdgeCors
from mesh.edge.envoy_config import (
    HEALTH_PATH,
    EdgeOptions,
    edge_descriptor_set,
    render,
    sds_document,
)
from mesh.edge.jwt_authn import EdgeAuthOptions
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import COMPOSE_OPTIONS, EDGE_DESCRIPTORS_NAME, HEADER, SDS_NAME
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
    service,
)
from mesh.k8s.options import IDENTITY_LABEL, MESH_UID, PKI_MOUNT, K8sOptions
from mesh.k8s.workloads import CONSUL_HTTP_PORT

EDGE_META = "edge-meta"
ENVOY_UID = 101  # the envoyproxy/envoy image's `envoy` user
CONFIG_MAP = "edge-envoy"


EDGE_HEALTH_PORT = 9902


def edge_options(
    options: K8sOptions, auth: EdgeAuthOptions, cors: EdgeCors = NO_CORS
) -> EdgeOptions:
    return replace(
        COMPOSE_OPTIONS,
        auth=auth,
        cors=cors,
        admin_address="127.0.0.1",
        health_port=EDGE_HEALTH_PORT,
        meta_address="127.0.0.1",
        trust_domain=options.trust_domain,
        ca_cert_path=f"{PKI_MOUNT}/ca.crt",
        cert_path=f"{PKI_MOUNT}/{EDGE}.crt",
        key_path=f"{PKI_MOUNT}/{EDGE}.key",
        cert_published=False,  # a Secret mount: its files change together (symlink swap)
    )


def config_map(
    options: K8sOptions, descriptors: Path, auth: EdgeAuthOptions, cors: EdgeCors = NO_CORS
) -> Manifest:
    """envoy.yaml, its SDS document and both descriptor sets (binary data)."""
    edge = edge_options(options, auth, cors)
    fds = load_descriptor_set(descriptors)
    model = build_model(fds.file)
    edge_fds = edge_descriptor_set(fds, model).SerializeToString(deterministic=True)

    def text(doc: dict[str, Any]) -> str:
        return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(CONFIG_MAP, options, {"app": EDGE}),
        "data": {"envoy.yaml": text(render(model, edge)), SDS_NAME: text(sds_document(edge))},
        "binaryData": {
            "descriptors.binpb": base64.b64encode(descriptors.read_bytes()).decode(),
            EDGE_DESCRIPTORS_NAME: base64.b64encode(edge_fds).decode(),
        },
    }


def deployment(options: K8sOptions, auth: EdgeAuthOptions) -> Manifest:
    edge = edge_options(options, auth)
    labels = {"app": EDGE, "app.kubernetes.io/name": EDGE, IDENTITY_LABEL: EDGE}
    envoy = {
        "name": "envoy",
        "image": options.envoy_image,
        "imagePullPolicy": "IfNotPresent",
        # The binary itself: the image's entrypoint would try to switch users.
        "command": ["envoy", "-c", "/etc/envoy/envoy.yaml", "--log-level", "warn"],
        "ports": [
            {"name": "https", "containerPort": edge.tls_listen_port, "protocol": "TCP"},
            {"name": "http", "containerPort": edge.listen_port, "protocol": "TCP"},
            {"name": "health", "containerPort": edge.health_port, "protocol": "TCP"},
        ],
        "resources": options.resources.as_dict(),
        "readinessProbe": http_probe(HEALTH_PATH, edge.health_port),
        "livenessProbe": http_probe(HEALTH_PATH, edge.health_port, period=10, failures=6),
        "securityContext": {**container_security(), "runAsUser": ENVOY_UID},
        "volumeMounts": [
            {"name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": True},
            {"name": "edge-pki", "mountPath": PKI_MOUNT, "readOnly": True},
            {"name": "eds", "mountPath": edge.eds_dir, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    meta = {
        "name": EDGE_META,
        "image": options.image_ref,
        "imagePullPolicy": "IfNotPresent",
        "command": [
            "python",
            "-m",
            "mesh.cli",
            "edge",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(edge.meta_port),
            "--eds-dir",
            edge.eds_dir,
            "--descriptors",
            edge.descriptor_path,
            f"--jwks-service={auth.jwks_service}",  # one word: it may be empty
        ],
        "env": [
            field_env("HOST_IP", "status.hostIP"),
            {"name": "CONSUL_HTTP_ADDR", "value": f"$(HOST_IP):{CONSUL_HTTP_PORT}"},
            *env_list(
                {
                    "MESH_REGISTRY": "consul",
                    "PYTHONUNBUFFERED": "1",
                    "PYTHONDONTWRITEBYTECODE": "1",
                }
            ),
        ],
        "resources": options.resources.as_dict(),
        # A native sidecar (an init container that keeps running, Kubernetes 1.29+):
        # Envoy starts only once this has started, and it listens only after writing
        # every EDS file, which Envoy needs to exist at start (compose: depends_on).
        "restartPolicy": "Always",
        "startupProbe": {
            "tcpSocket": {"port": edge.meta_port},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "readinessProbe": {"tcpSocket": {"port": edge.meta_port}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": edge.meta_port}, "periodSeconds": 10},
        "securityContext": {**container_security(), "runAsUser": MESH_UID},
        "volumeMounts": [
            # The descriptor set Envoy transcodes with: reflection answers the same.
            {"name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": True},
            {"name": "eds", "mountPath": edge.eds_dir},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(EDGE, options, labels),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": EDGE}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    # Envoy (uid 101) reads the edge Secret through this group (files 0440).
                    "securityContext": pod_security(MESH_UID),
                    "initContainers": [meta],
                    "containers": [envoy],
                    "volumes": [
                        {"name": "envoy-config", "configMap": {"name": CONFIG_MAP}},
                        pki_volume("edge-pki", EDGE),
                        empty_dir("eds", memory=True, size="16Mi"),
                        empty_dir("tmp"),
                    ],
                },
            },
        },
    }


def edge_manifests(
    options: K8sOptions, descriptors: Path, auth: EdgeAuthOptions, cors: EdgeCors = NO_CORS
) -> list[Manifest]:
    """The edge for the project's contracts (`descriptors`), token issuer (`auth`) and
    browser origins (`cors`): `[edge]` in its mesh.toml (`Topology.edge_descriptors()`,
    `Topology.edge.auth`, `Topology.edge.cors`)."""
    edge = edge_options(options, auth, cors)
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(EDGE, options, {"app": EDGE}),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": EDGE}}},
    }
    return [
        config_map(options, descriptors, auth, cors),
        deployment(options, auth),
        pdb,
        service(
            EDGE,
            options,
            {"app": EDGE},
            [("https", edge.tls_listen_port)],
            labels={"app": EDGE},
            kind="LoadBalancer",
        ),
    ]
