"""Small builders the manifest modules share: metadata, probes, security contexts.

Everything is plain dicts (what `yaml.safe_dump` writes and `kubernetes-validate`
checks); no Kubernetes client library is needed to render.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from mesh.k8s.options import PART_OF, K8sOptions

Manifest = dict[str, Any]


def metadata(
    name: str,
    options: K8sOptions,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": options.namespace,
        "labels": {"app.kubernetes.io/part-of": PART_OF, **(labels or {})},
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def http_probe(
    path: str, port: int, *, period: int = 5, failures: int = 3, timeout: int = 2
) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def pod_security(uid: int, *, fs_group: int | None = None) -> dict[str, Any]:
    """Non-root, the runtime's default seccomp profile; volumes group-readable by `uid`."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid if fs_group is None else fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(*, read_only_root: bool = True) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def secret_volume(name: str, secret: str, *, mode: int = 0o440) -> dict[str, Any]:
    """A Secret as files, readable by the pod's group only (keys stay out of `other`)."""
    return {"name": name, "secret": {"secretName": secret, "defaultMode": mode}}


def empty_dir(name: str, *, memory: bool = False, size: str = "64Mi") -> dict[str, Any]:
    spec: dict[str, Any] = {"sizeLimit": size}
    if memory:
        spec["medium"] = "Memory"
    return {"name": name, "emptyDir": spec}


def env_list(values: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def field_env(name: str, path: str) -> dict[str, Any]:
    """An env var from the downward API (`metadata.name`, `status.podIP`, ...)."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def service(
    name: str,
    options: K8sOptions,
    selector: Mapping[str, str],
    ports: list[tuple[str, int]],
    *,
    labels: Mapping[str, str] | None = None,
    headless: bool = False,
    kind: str = "ClusterIP",
) -> Manifest:
    spec: dict[str, Any] = {
        "type": kind,
        "selector": dict(selector),
        "ports": [
            {"name": pname, "port": port, "targetPort": pname, "protocol": "TCP"}
            for pname, port in ports
        ],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, options, labels),
        "spec": spec,
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (envoy.yaml, nats.conf) as literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_all(docs: list[Manifest]) -> str:
    """The documents as one YAML stream (`---` between them), keys in the order built."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120)


def dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)
