"""The Kubernetes manifests (`meshctl k8s render`), checked without a cluster.

No cluster exists where these run: every rendered document is validated offline
against the JSON schemas of Kubernetes 1.31 that the `kubernetes-validate` wheel
ships (strict: unknown fields are errors), the NATS config (with the `nats-auth`
Secret it includes) by the real nats-server's `-t`, and the edge's Envoy config by
the real Envoy's `--mode validate`. The rest is structure: probes, resources and
non-root everywhere, one Deployment per track, NATS a 3-node JetStream cluster,
NetworkPolicies equal to the contracts' caller policy, no key material committed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import re
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no stubs
import pytest
import yaml
from cryptography import x509

from base.settings import specs
from mesh.cli import main as meshctl
from mesh.discovery.embedded import EmbeddedRegistry
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS
from mesh.edge.serve import serve_edge
from mesh.k8s.certificates import CERT_MANAGER_API, ISSUER, ISSUER_LIFETIME_DAYS
from mesh.k8s.infra import NATS_AUTH_SECRET
from mesh.k8s.network import service_callers
from mesh.k8s.options import (
    IDENTITY_LABEL,
    KUBERNETES_VERSION,
    MESH_UID,
    K8sOptions,
    K8sOptionsError,
)
from mesh.k8s.render import CONSUL_VALUES, DEPLOY_DIR, render_manifests, write_manifests
from mesh.local.topology import load_topology
from mesh.security.pki import KeyPair, PkiError, create_ca, create_intermediate, describe
from mesh.security.policy import load_rows
from mesh.settings import ResilienceSettings, SecuritySettings, Settings
from mesh.tools import nats_server_binary
from tests.support import cert_manager
from tests.support.envoy import validate as envoy_validate
from tests.support.poll import eventually
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
TOPOLOGY = load_topology(ROOT / "mesh.toml")
Doc = dict[str, Any]


def _docs(directory: Path) -> list[Doc]:
    return [
        d
        for f in sorted(directory.glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d is not None
    ]


def _kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _containers(doc: Doc) -> list[Doc]:
    containers: list[Doc] = doc["spec"]["template"]["spec"]["containers"]
    return containers


@pytest.fixture(scope="module")
def committed() -> list[Doc]:
    return _docs(DEPLOY_DIR)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`meshctl k8s secrets` into a temporary directory (the CA and keys live there)."""
    out = tmp_path_factory.mktemp("k8s-material") / "k8s"
    assert meshctl(["k8s", "secrets", "--material", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def secrets(material: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all((material / "secrets.yaml").read_text()) if d]


def test_committed_copy_is_current(tmp_path: Path) -> None:
    options = K8sOptions()
    write_manifests(tmp_path, render_manifests(TOPOLOGY, options), options)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.yaml"))
    kept = sorted(p.relative_to(DEPLOY_DIR) for p in DEPLOY_DIR.rglob("*.yaml"))
    assert fresh == kept, "deploy/k8s/ is stale: run `meshctl k8s render`"
    for rel in fresh:
        assert (tmp_path / rel).read_text() == (DEPLOY_DIR / rel).read_text(), (
            f"deploy/k8s/{rel} is stale: run `meshctl k8s render`"
        )


def test_every_manifest_validates_against_the_kubernetes_schemas(
    committed: list[Doc], secrets: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*_args: object) -> None:
        raise AssertionError("schema validation tried the network")

    # Offline: the schemas come from the wheel, never fetched while the tests run.
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert len(committed) > 50
    for doc in [*committed, *secrets]:
        _validate(doc)


def _validate(doc: Doc) -> None:
    """Against Kubernetes' schemas; cert-manager's kinds are not Kubernetes' own
    (test_certificates_* checks them)."""
    if doc["apiVersion"] == CERT_MANAGER_API:
        return
    version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert version == "1.31", (doc["kind"], doc["metadata"]["name"], version)


def test_validation_is_real_an_unknown_or_mistyped_field_fails(committed: list[Doc]) -> None:
    deployment = _kind(committed, "Deployment")[0]
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_one_deployment_per_service_and_track_with_the_policy_labels(
    committed: list[Doc],
) -> None:
    options = K8sOptions()
    for spec in TOPOLOGY.services:
        for track in options.tracks:
            dep = _named(committed, "Deployment", f"{spec.name}-{track}")
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert labels["app"] == spec.name
            assert labels["track"] == track
            assert labels["version"] == options.tag
            assert labels[IDENTITY_LABEL] == spec.name
            assert dep["spec"]["selector"]["matchLabels"] == {"app": spec.name, "track": track}
            env = {e["name"]: e for e in _containers(dep)[0]["env"]}
            assert env["MESH_TRACK"]["value"] == track
            assert env["MESH_VERSION"]["value"] == options.tag
            assert env["MESH_GRPC_PORT"]["value"] == str(spec.grpc_port)
            assert _containers(dep)[0]["image"] == f"shop-mesh:{options.tag}"
            # The active track runs the topology's instances; the other waits at zero.
            expected = spec.instances if track == options.active_track else 0
            assert dep["spec"]["replicas"] == expected
            for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
                other = _named(committed, kind, f"{spec.name}-{track}")
                assert other["metadata"]["labels"]["track"] == track
            hpa = _named(committed, "HorizontalPodAutoscaler", f"{spec.name}-{track}")
            assert hpa["apiVersion"] == "autoscaling/v2"
            assert hpa["spec"]["scaleTargetRef"]["name"] == f"{spec.name}-{track}"
            assert hpa["spec"]["minReplicas"] == spec.instances


def test_every_workload_has_probes_resources_and_runs_as_non_root(committed: list[Doc]) -> None:
    workloads = _kind(committed, "Deployment") + _kind(committed, "StatefulSet")
    assert workloads
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            where = f"{w['metadata']['name']}/{c['name']}"
            assert c.get("readinessProbe") and c.get("livenessProbe"), where
            assert set(c["resources"]) == {"requests", "limits"}, where
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            uid = sc.get("runAsUser", pod["securityContext"]["runAsUser"])
            assert uid != 0, where
    for spec in TOPOLOGY.services:
        dep = _named(committed, "Deployment", f"{spec.name}-blue")
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == MESH_UID
        probe = _containers(dep)[0]["readinessProbe"]
        # mTLS-only gRPC port: the kubelet's plaintext grpc probe could never pass; the
        # admin port's /health is grpc.health.v1's twin.
        assert probe["httpGet"] == {"path": "/health", "port": spec.admin_port}
        assert "grpc" not in _containers(dep)[0]["livenessProbe"]


def test_every_env_var_of_a_service_is_a_setting_the_code_reads(committed: list[Doc]) -> None:
    declared = {
        spec.env
        for cls in (Settings, ResilienceSettings, SecuritySettings)
        for _, spec in specs(cls)
    }
    # HOST_IP only builds CONSUL_HTTP_ADDR; MESH_TRACK is the traffic policy's subset key
    # (declared by mesh/traffic's settings).
    extra = {"HOST_IP", "MESH_TRACK", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    for spec in TOPOLOGY.services:
        env = _containers(_named(committed, "Deployment", f"{spec.name}-blue"))[0]["env"]
        for var in (e["name"] for e in env):
            if var.endswith("_DATABASE_URL"):
                assert var == f"{spec.name.upper()}_DATABASE_URL"
            else:
                assert var in declared | extra | set(spec.env), f"{spec.name}: {var}"


def test_nats_is_a_three_node_jetstream_cluster(committed: list[Doc]) -> None:
    sts = _named(committed, "StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "nats-headless"
    assert _named(committed, "Service", "nats-headless")["spec"]["clusterIP"] == "None"
    claims = sts["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    conf = _named(committed, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert re.search(r"^jetstream \{\n  store_dir: /data", conf, re.M)
    routes = re.findall(r"nats://(nats-\d)\.nats-headless\.shop-mesh\.svc:6222", conf)
    assert routes == ["nats-0", "nats-1", "nats-2"]
    assert "include ./auth/auth.conf" in conf


def _nats_dir(tmp_path: Path, committed: list[Doc], auth: str) -> Path:
    (tmp_path / "auth").mkdir(parents=True)
    (tmp_path / "auth" / "auth.conf").write_text(auth)
    conf = tmp_path / "nats.conf"
    conf.write_text(_named(committed, "ConfigMap", "nats-config")["data"]["nats.conf"])
    return conf


def _nats_check(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nats_server_binary(), "--config", str(conf), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_nats_accepts_the_config_with_the_rendered_auth_and_refuses_a_broken_one(
    tmp_path: Path, committed: list[Doc], secrets: list[Doc]
) -> None:
    auth = _named(secrets, "Secret", "nats-auth")["stringData"]["auth.conf"]
    assert "nkey:" in auth and "permissions" in auth
    ok = _nats_check(_nats_dir(tmp_path / "ok", committed, auth))
    assert ok.returncode == 0, ok.stderr + ok.stdout
    broken = _nats_check(_nats_dir(tmp_path / "broken", committed, auth.replace("}", "", 1)))
    assert broken.returncode != 0


def test_payments_admits_only_orders_pods_and_every_policy_mirrors_the_contracts(
    committed: list[Doc],
) -> None:
    policies = _kind(committed, "NetworkPolicy")
    payments = _named(committed, "NetworkPolicy", "payments-callers")
    grpc_rule = next(r for r in payments["spec"]["ingress"] if r["ports"][0]["port"] == 50054)
    mesh_peers = [p for p in grpc_rule["from"] if "matchExpressions" in p.get("podSelector", {})]
    assert mesh_peers == [
        {
            "podSelector": {
                "matchExpressions": [
                    {"key": IDENTITY_LABEL, "operator": "In", "values": ["orders"]}
                ]
            }
        }
    ]
    # No other rule of any policy on payments' pods admits its gRPC port.
    on_payments = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app") == "payments"
    ]
    for p in on_payments:
        for rule in p["spec"]["ingress"]:
            if rule is not grpc_rule:
                assert all(port["port"] != 50054 for port in rule.get("ports", [])), p
    # Every service's gRPC port admits exactly the callers `meshctl policy` lists.
    model = build_model(load_descriptor_set(DESCRIPTORS).file)
    callers = service_callers(load_rows(), model)
    assert callers["payments"] == frozenset({"orders"})
    for spec in TOPOLOGY.services:
        rule = _named(committed, "NetworkPolicy", f"{spec.name}-callers")["spec"]["ingress"][0]
        exprs = [p["podSelector"]["matchExpressions"][0] for p in rule["from"]
                 if "matchExpressions" in p["podSelector"]]  # fmt: skip
        assert exprs == [
            {"key": IDENTITY_LABEL, "operator": "In", "values": sorted(callers[spec.name] or ())}
        ]
    # Default deny: a pod no policy selects admits nothing.
    deny = _named(committed, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    # A service's database admits only that service's pods.
    db = _named(committed, "NetworkPolicy", "payments-postgres")
    assert db["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"] == [
        "payments"
    ]


def test_callers_union_any_identity_wins_and_unknown_services_are_ignored() -> None:
    from mesh.security.policy import PolicyRow

    model = build_model(load_descriptor_set(DESCRIPTORS).file)
    rows = [
        PolicyRow("shop.users.v1.UserService", "A", False, frozenset({"edge"})),
        PolicyRow("shop.users.v1.UserService", "B", False, frozenset({"orders"})),
        PolicyRow("shop.payments.v1.PaymentService", "C", True, frozenset({"*"})),
        PolicyRow("shop.payments.v1.PaymentService", "D", True, frozenset({"orders"})),
        PolicyRow("no.such.v1.Service", "E", True, frozenset({"x"})),
    ]
    assert service_callers(rows, model) == {
        "users": frozenset({"edge", "orders"}),
        "payments": None,
    }


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def test_no_key_material_is_committed_and_every_referenced_secret_is_made(
    committed: list[Doc], secrets: list[Doc]
) -> None:
    assert _kind(committed, "Secret") == []
    for path in DEPLOY_DIR.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY" not in text, path
            assert not re.search(r"\bSU[A-Z2-7]{56}\b", text), f"{path}: an nkey seed"
    made = {d["metadata"]["name"]: d for d in secrets}
    # The identities' Secrets are cert-manager's, one per rendered Certificate.
    certified = {d["spec"]["secretName"] for d in _kind(committed, "Certificate")}
    assert not certified & set(made), "a Secret both cert-manager and meshctl would write"
    made.update({name: {"stringData": dict.fromkeys(("tls.crt", "tls.key", "ca.crt"))}
                 for name in certified})  # fmt: skip
    for node in _walk(committed):
        if not isinstance(node, dict):
            continue
        ref = (
            node.get("secret", {}).get("secretName")
            if isinstance(node.get("secret"), dict)
            else None
        )
        key_ref = node.get("secretKeyRef")
        if ref:
            assert ref in made, f"a volume names Secret {ref}, which nothing makes"
            for item in node["secret"].get("items", []):
                assert item["key"] in made[ref]["stringData"], (ref, item)
        if key_ref:
            assert key_ref["key"] in made[key_ref["name"]]["stringData"], key_ref
    # The Helm values name the consul identity's Secret too.
    values = yaml.safe_load((DEPLOY_DIR / CONSUL_VALUES).read_text())
    assert values["client"]["extraVolumes"][0]["name"] in made


def test_secrets_are_private_and_kept_across_runs(material: Path, secrets: list[Doc]) -> None:
    assert stat.S_IMODE(material.stat().st_mode) == 0o700
    assert stat.S_IMODE((material / "secrets.yaml").stat().st_mode) == 0o600
    issuer = _named(secrets, "Secret", ISSUER)
    assert issuer["type"] == "kubernetes.io/tls"
    assert "PRIVATE KEY" in issuer["stringData"]["tls.key"]
    assert not [d for d in secrets if d["metadata"]["name"].endswith("-pki")]  # cert-manager's
    assert stat.S_IMODE((material / "issuer" / "issuer.key").stat().st_mode) == 0o600
    # The one private key handed to the cluster is the intermediate's.
    assert [d["metadata"]["name"] for d in secrets if "PRIVATE KEY" in json.dumps(d)] == [ISSUER]
    kept = ("pki/ca.crt", "pki/ca.key", "issuer/issuer.crt", "issuer/issuer.key",
            "db/orders.password")  # fmt: skip
    before = [(material / k).read_bytes() for k in kept]
    assert meshctl(["k8s", "secrets", "--material", str(material)]) == 0
    assert [(material / k).read_bytes() for k in kept] == before


async def test_edge_envoy_config_is_valid_for_the_real_envoy(
    tmp_path: Path, committed: list[Doc], secrets: list[Doc]
) -> None:
    """The ConfigMap's envoy.yaml, the edge-pki Secret's files, and the EDS files the
    companion writes before it listens (Envoy, in the pod, starts only after its native
    sidecar has started): the real Envoy accepts them."""
    cm = _named(committed, "ConfigMap", "edge-envoy")
    assert base64.b64decode(cm["binaryData"]["descriptors.binpb"]) == DESCRIPTORS.read_bytes()
    config, pki, eds = tmp_path / "envoy", tmp_path / "pki", tmp_path / "eds"
    for d in (config, pki, eds):
        d.mkdir()
    for name, b64 in cm["binaryData"].items():
        (config / name).write_bytes(base64.b64decode(b64))
    edge_pki = cert_manager.issue(
        _named(committed, "Certificate", "edge-pki"),
        _named(secrets, "Secret", ISSUER)["stringData"],
    )
    pod = _named(committed, "Deployment", "edge")["spec"]["template"]["spec"]
    cert_manager.mount(next(v for v in pod["volumes"] if v["name"] == "edge-pki"), edge_pki, pki)

    def local(text: str) -> str:
        return (
            text.replace("/etc/envoy", str(config))
            .replace("/etc/shop-mesh/pki", str(pki))
            .replace("/var/run/envoy/eds", str(eds))
        )

    for name, text in cm["data"].items():
        (config / name).write_text(local(text))
    sidecar = _named(committed, "Deployment", "edge")["spec"]["template"]["spec"]["initContainers"]
    assert [(c["name"], c["restartPolicy"]) for c in sidecar] == [("edge-meta", "Always")]
    assert sidecar[0]["startupProbe"]["tcpSocket"]["port"] == 9190
    envoy_yaml = yaml.safe_load((config / "envoy.yaml").read_text())
    meta = next(c for c in envoy_yaml["static_resources"]["clusters"] if c["name"] == "edge_meta")
    assert "127.0.0.1" in str(meta), "the companion runs in the edge's pod"

    # The companion itself (`meshctl edge serve`, the sidecar's command) on an empty
    # registry: once its port answers (the sidecar's startup probe), Envoy may start.
    registry = EmbeddedRegistry(tmp_path / "registry")
    stop = asyncio.Event()
    port = free_port()
    companion = asyncio.create_task(
        serve_edge(
            registry,
            host="127.0.0.1",
            port=port,
            eds_dir=eds,
            descriptors=config / "descriptors.binpb",
            stop=stop,
        )
    )
    try:
        await eventually(lambda: _listening(port), 30, "the companion listening")
        result = await asyncio.to_thread(envoy_validate, config / "envoy.yaml")
    finally:
        stop.set()
        await companion
        await registry.close()
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]


def test_every_config_map_fits_the_api_servers_limit(committed: list[Doc]) -> None:
    """A ConfigMap holds at most 1 MiB (etcd's object limit): the edge's carries the
    Envoy config and two descriptor sets, which grow with the contracts."""
    for cm in _kind(committed, "ConfigMap"):
        size = sum(len(v.encode()) for v in cm.get("data", {}).values())
        size += sum(len(base64.b64decode(v)) for v in cm.get("binaryData", {}).values())
        assert size < 1024 * 1024 * 3 // 4, (cm["metadata"]["name"], size)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def test_a_release_renders_one_services_green_track(tmp_path: Path) -> None:
    out = tmp_path / "green"
    argv = ["k8s", "render", "--out", str(out), "--service", "orders", "--tracks", "green",
            "--tag", "1.1.0"]  # fmt: skip
    assert meshctl(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["30-orders.yaml"]
    docs = _docs(out)
    dep = _named(docs, "Deployment", "orders-green")
    assert dep["spec"]["replicas"] == 2
    assert _containers(dep)[0]["image"] == "shop-mesh:1.1.0"
    env = {e["name"]: e.get("value") for e in _containers(dep)[0]["env"]}
    assert (env["MESH_TRACK"], env["MESH_VERSION"]) == ("green", "1.1.0")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-blue")]


@pytest.mark.parametrize(
    "argv",
    [
        ["--service", "nosuch"],
        ["--tag", "bad tag"],
        ["--namespace", "Not_A_Label"],
        ["--tracks", "blue", "--active", "green"],
        # Each of these was rendered (the tracks' objects twice, the names into the
        # edge Certificate, the image into every Deployment).
        ["--tracks", "blue,blue"],
        ["--tag", "1.0\n"],
        ["--image", "UPPER/x"],
        ["--image", "shop-mesh:1.0"],
        ["--edge-name", "not a name"],
        ["--edge-name", ""],
    ],
)
def test_bad_render_options_are_refused_with_exit_2(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert meshctl(["k8s", "render", "--out", str(tmp_path / "x"), *argv]) == 2
    assert "meshctl k8s render:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_dependent_env_vars_are_defined_before_use(committed: list[Doc]) -> None:
    """`$(HOST_IP)` expands only if HOST_IP comes earlier in the list (else it stays literal)."""
    for dep in _kind(committed, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            seen: set[str] = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert ref in seen, f"{dep['metadata']['name']}/{c['name']}: {e['name']}"
                seen.add(e["name"])


def test_edge_certificate_answers_to_the_given_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["k8s", "render", "--out", str(tmp_path / "named"), "--edge-name", "shop.example.com",
            "--edge-name", "203.0.113.7"]  # fmt: skip
    assert meshctl(argv) == 0
    spec = _named(_docs(tmp_path / "named"), "Certificate", "edge-pki")["spec"]
    assert spec["dnsNames"] == ["edge.mesh.local", "localhost", "shop.example.com"]
    assert spec["ipAddresses"] == ["127.0.0.1", "203.0.113.7"]
    # Where the option was before, it says where it went.
    assert meshctl(["k8s", "secrets", "--material", str(tmp_path / "m"), "--edge-name", "x"]) == 2
    assert "an option of `meshctl k8s render` now" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    # Without the option the names stay those of a local edge.
    assert meshctl(["k8s", "render", "--out", str(tmp_path / "plain")]) == 0
    spec = _named(_docs(tmp_path / "plain"), "Certificate", "edge-pki")["spec"]
    assert spec["dnsNames"] == ["edge.mesh.local", "localhost"]


def test_certificates_name_every_identity_as_the_mesh_verifies_it(
    committed: list[Doc], secrets: list[Doc]
) -> None:
    """One Certificate per identity, from the namespace's CA Issuer over `mesh-issuer`,
    renewed with a third of its lifetime left, with the SANs a local certificate has;
    what cert-manager would issue from them chains to the root every pod trusts."""
    [issuer] = _kind(committed, "Issuer")
    assert issuer["spec"] == {"ca": {"secretName": ISSUER}}
    identities = [*(s.name for s in TOPOLOGY.services), "edge", "consul"]
    certs = {d["metadata"]["name"]: d["spec"] for d in _kind(committed, "Certificate")}
    assert sorted(certs) == sorted(f"{i}-pki" for i in identities)
    lifetime = dt.timedelta(seconds=SecuritySettings().cert_lifetime_s)
    for identity in identities:
        spec = certs[f"{identity}-pki"]
        assert spec["secretName"] == f"{identity}-pki"
        assert spec["uris"] == [f"spiffe://mesh.local/svc/{identity}"]
        assert spec["dnsNames"][0] == f"{identity}.mesh.local"
        assert cert_manager.go_duration(spec["duration"]) == lifetime
        assert cert_manager.go_duration(spec["renewBefore"]) == lifetime / 3
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        assert spec["issuerRef"] == {"name": ISSUER, "kind": "Issuer", "group": "cert-manager.io"}
    for doc in [issuer, *_kind(committed, "Certificate")]:
        assert doc["apiVersion"] == CERT_MANAGER_API
        assert doc["metadata"]["namespace"] == "shop-mesh"
    # Issued from the rendered spec, a leaf chains to the root and names its identity.
    made = cert_manager.issue(certs_doc := _named(committed, "Certificate", "orders-pki"),
                              _named(secrets, "Secret", ISSUER)["stringData"])  # fmt: skip
    leaf, intermediate = x509.load_pem_x509_certificates(made["tls.crt"].encode())
    [root] = x509.load_pem_x509_certificates(made["ca.crt"].encode())
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    assert describe(made["tls.crt"].encode()).identity == certs_doc["spec"]["uris"][0]
    assert (
        intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        == 0
    )


def _leaves_only_ca() -> KeyPair:
    """A root as `create_ca` made them before 7 Dec 2026: path length 0."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "old CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    return KeyPair(
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def test_a_certificate_shorter_than_cert_managers_minimum_is_refused() -> None:
    with pytest.raises(K8sOptionsError, match="an hour at least"):
        render_manifests(TOPOLOGY, K8sOptions(cert_lifetime_s=600))


def test_the_issuer_is_renewed_when_due_or_of_another_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kept while good; re-issued past two thirds of its lifetime, and when the root it
    chains to is not the material's (a new root); a root that may not sign a CA (path
    length 0, made before 7 Dec 2026) is refused with what to do."""
    from mesh.k8s.secrets import issuer_secret

    options = K8sOptions()
    first = issuer_secret(options, tmp_path)["stringData"]
    assert issuer_secret(options, tmp_path)["stringData"] == first
    # Past two thirds: an intermediate issued 61 of 90 days ago.
    root = (tmp_path / "pki" / "ca.crt").read_bytes(), (tmp_path / "pki" / "ca.key").read_bytes()
    old = create_intermediate(KeyPair(*root), "mesh.local", dt.timedelta(days=ISSUER_LIFETIME_DAYS),
                              now=dt.datetime.now(dt.UTC) - dt.timedelta(days=61))  # fmt: skip
    (tmp_path / "issuer" / "issuer.crt").write_bytes(old.cert_pem)
    (tmp_path / "issuer" / "issuer.key").write_bytes(old.key_pem)
    renewed = issuer_secret(options, tmp_path)["stringData"]
    assert renewed["tls.crt"] not in (first["tls.crt"], old.cert_pem.decode())
    assert renewed["ca.crt"] == first["ca.crt"]  # the same root
    # Another root's intermediate is replaced by one of the material's root.
    other = create_intermediate(create_ca("mesh.local", dt.timedelta(days=365)), "mesh.local",
                                dt.timedelta(days=90))  # fmt: skip
    (tmp_path / "issuer" / "issuer.crt").write_bytes(other.cert_pem)
    (tmp_path / "issuer" / "issuer.key").write_bytes(other.key_pem)
    again = issuer_secret(options, tmp_path)["stringData"]
    [mine, _] = x509.load_pem_x509_certificates(again["tls.crt"].encode())
    mine.verify_directly_issued_by(x509.load_pem_x509_certificate(root[0]))
    # A root of before, path length 0, cannot sign an intermediate.
    leaves_only = tmp_path / "old-root"
    (leaves_only / "pki").mkdir(parents=True)
    old_root = _leaves_only_ca()
    (leaves_only / "pki" / "ca.crt").write_bytes(old_root.cert_pem)
    (leaves_only / "pki" / "ca.key").write_bytes(old_root.key_pem)
    with pytest.raises(PkiError, match="path length 0"):
        issuer_secret(options, leaves_only)
    assert meshctl(["k8s", "secrets", "--material", str(leaves_only)]) == 1
    err = capsys.readouterr().err
    assert "path length 0" in err and f"move {leaves_only / 'pki'} away" in err, err


@pytest.mark.parametrize("enabled", [True, False])
def test_the_edge_reaches_the_token_issuers_admin_port_only_when_it_verifies_tokens(
    enabled: bool,
) -> None:
    """The edge's jwt_authn fetches the JWKS from the issuer's admin port (when the edge
    has end-user auth): that port, and no other service's, admits the edge's pods."""
    from mesh.edge.jwt_authn import EdgeAuthOptions
    from mesh.k8s import network

    policies = network.network_policies(
        TOPOLOGY.services,
        load_rows(),
        build_model(load_descriptor_set(DESCRIPTORS).file),
        K8sOptions(),
        EdgeAuthOptions(enabled=enabled),
    )
    for spec in TOPOLOGY.services:
        policy = _named(policies, "NetworkPolicy", f"{spec.name}-callers")
        admin = next(
            r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == spec.admin_port
        )
        edge_peer = {
            "podSelector": {
                "matchExpressions": [{"key": IDENTITY_LABEL, "operator": "In", "values": ["edge"]}]
            }
        }
        assert (edge_peer in admin["from"]) == (enabled and spec.name == "users"), spec.name


def test_any_topology_renders_a_service_no_contract_names_admits_no_caller(
    tmp_path: Path,
) -> None:
    """Generic over the topology: a service with free ports (0 locally) gets the pod
    defaults, and with no RPC in the contracts its gRPC port admits only the Consul
    agents' health checks; no event identities: no NATS seed mounted."""
    from mesh.local.topology import parse_topology

    doc = {"services": {"billing": {"module": "acme.billing", "instances": 3}}}
    topology = parse_topology(doc, tmp_path / "mesh.toml")
    files = render_manifests(topology, K8sOptions(namespace="acme", tag="2.0.0"))
    docs = [d for ds in files.values() for d in ds]
    for d in docs:
        _validate(d)
    assert _named(docs, "Certificate", "billing-pki")["metadata"]["namespace"] == "acme"
    dep = _named(docs, "Deployment", "billing-blue")
    assert dep["metadata"]["namespace"] == "acme"
    assert dep["spec"]["replicas"] == 3
    ports = {p["name"]: p["containerPort"] for p in _containers(dep)[0]["ports"]}
    assert ports == {"grpc": 50051, "admin": 9100}
    env = {e["name"] for e in _containers(dep)[0]["env"]}
    assert "NATS_NKEY_SEED_FILE" not in env
    policy = _named(docs, "NetworkPolicy", "billing-callers")
    grpc_rule = policy["spec"]["ingress"][0]
    assert grpc_rule["from"] == [
        {"podSelector": {"matchLabels": {"app": "consul", "component": "client"}}}
    ]


NOTES_PROTO = """
syntax = "proto3";
package notes.notes.v1;
import "google/api/annotations.proto";
import "meshproto/api/v1/options.proto";

service NoteService {
  rpc GetNote(GetNoteRequest) returns (Note) {
    option (google.api.http) = {get: "/api/v1/notes/{note_id}"};
    option (meshproto.api.v1.auth) = {access: ACCESS_USER};
  }
}
message GetNoteRequest { string note_id = 1; }
message Note { string note_id = 1; }
"""


def test_a_projects_edge_serves_its_contracts_and_trusts_its_issuer(tmp_path: Path) -> None:
    """`[edge]` in another project's mesh.toml reaches its manifests: the ConfigMap
    carries its descriptor set and an Envoy config for its routes and issuer, the
    companion syncs the keys from its issuer, and only that issuer's admin port admits
    the edge."""
    from mesh.contracts.codegen import build_project

    (tmp_path / "protos" / "notes" / "notes" / "v1").mkdir(parents=True)
    (tmp_path / "protos" / "notes" / "notes" / "v1" / "notes.proto").write_text(NOTES_PROTO)
    descriptors = build_project(tmp_path / "protos", tmp_path)
    (tmp_path / "mesh.toml").write_text(
        '[services.notes]\nmodule = "notes.server"\n'
        '[services.accounts]\nmodule = "accounts.server"\n'
        '[edge]\ndescriptors = "descriptors.binpb"\n'
        '[edge.auth]\nissuer = "notes/accounts"\naudiences = ["notes"]\n'
        'jwks_service = "accounts"\n'
    )
    files = render_manifests(load_topology(tmp_path / "mesh.toml"), K8sOptions())
    docs = [d for ds in files.values() for d in ds]
    cm = _named(docs, "ConfigMap", "edge-envoy")
    assert base64.b64decode(cm["binaryData"]["descriptors.binpb"]) == descriptors.read_bytes()
    envoy = yaml.safe_load(cm["data"]["envoy.yaml"])
    clusters = {c["name"] for c in envoy["static_resources"]["clusters"]}
    assert "notes" in clusters and "orders" not in clusters
    text = cm["data"]["envoy.yaml"]
    assert "issuer: notes/accounts" in text and "shop-mesh/users" not in text
    companion = next(
        c
        for c in _named(docs, "Deployment", "edge")["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == "edge-meta"
    )
    assert "--jwks-service=accounts" in companion["command"]
    edge_peer = {
        "podSelector": {
            "matchExpressions": [{"key": IDENTITY_LABEL, "operator": "In", "values": ["edge"]}]
        }
    }
    for name, admits in (("accounts", True), ("notes", False)):
        policy = _named(docs, "NetworkPolicy", f"{name}-callers")
        admin = policy["spec"]["ingress"][1]
        assert (edge_peer in admin["from"]) is admits, name


def test_a_projects_edge_with_no_issuer_fetches_no_keys(tmp_path: Path) -> None:
    """`[edge]` without `[edge.auth]`: the companion syncs no key endpoints, Envoy gets
    the inline key no one holds and no JWKS cluster, and no admin port admits the edge."""
    from mesh.contracts.codegen import build_project
    from mesh.edge.jwt_authn import JWKS_CLUSTER, NO_KEYS

    (tmp_path / "protos" / "notes" / "notes" / "v1").mkdir(parents=True)
    (tmp_path / "protos" / "notes" / "notes" / "v1" / "notes.proto").write_text(NOTES_PROTO)
    build_project(tmp_path / "protos", tmp_path)
    (tmp_path / "mesh.toml").write_text(
        '[services.notes]\nmodule = "notes.server"\n[edge]\ndescriptors = "descriptors.binpb"\n'
    )
    files = render_manifests(load_topology(tmp_path / "mesh.toml"), K8sOptions())
    docs = [d for ds in files.values() for d in ds]
    envoy = yaml.safe_load(_named(docs, "ConfigMap", "edge-envoy")["data"]["envoy.yaml"])
    assert JWKS_CLUSTER not in {c["name"] for c in envoy["static_resources"]["clusters"]}
    assert json.dumps(NO_KEYS) in json.dumps(envoy)
    spec = _named(docs, "Deployment", "edge")["spec"]["template"]["spec"]
    companion = next(c for c in spec["initContainers"] if c["name"] == "edge-meta")
    assert "--jwks-service=" in companion["command"]
    admin = _named(docs, "NetworkPolicy", "notes-callers")["spec"]["ingress"][1]
    assert "edge" not in json.dumps(admin["from"])


def test_a_local_only_identity_gets_no_seed_and_no_grant_in_kubernetes(
    secrets: list[Doc],
) -> None:
    """`event-subscriber-example` (examples/event_subscriber.py, user.created with its
    emails) is `meshctl up`'s only; the services' identities are all there."""
    made = {d["metadata"]["name"]: d for d in secrets}
    assert "event-subscriber-example-nats" not in made
    assert {f"{s}-nats" for s in ("users", "orders", "inventory", "payments")} <= set(made)
    auth = next(d for d in secrets if d["metadata"]["name"] == NATS_AUTH_SECRET)
    text = "\n".join(auth["stringData"].values())
    assert "event-subscriber-example" not in text and "orders-user-deleted" in text


def test_the_edge_admin_stays_in_its_pod_and_the_kubelet_probes_the_health_listener(
    committed: list[Doc],
) -> None:
    """Envoy's admin stops the edge and rewrites its runtime: 127.0.0.1 only, no
    container port, since a NetworkPolicy protects nothing where the network plugin
    does not enforce it. The probes ask the health listener, which serves /ready only
    (tests/integration/edge/test_edge_admin.py runs it in a real Envoy)."""
    envoy_yaml = yaml.safe_load(_named(committed, "ConfigMap", "edge-envoy")["data"]["envoy.yaml"])
    assert envoy_yaml["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    [health] = [x for x in envoy_yaml["static_resources"]["listeners"] if x["name"] == "health"]
    port = health["address"]["socket_address"]["port_value"]
    [envoy] = [
        c for c in _containers(_named(committed, "Deployment", "edge")) if c["name"] == "envoy"
    ]
    assert {p["name"]: p["containerPort"] for p in envoy["ports"]}["health"] == port
    assert "admin" not in {p["name"] for p in envoy["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert envoy[probe]["httpGet"] == {"path": "/ready", "port": port}, probe


def test_render_writes_a_projects_manifests_into_the_projects_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out, another project's manifests go to its own deploy/k8s/ (as `edge
    render` puts its envoy/), never over this checkout's committed ones (until 7 Dec 2026
    they did). A write elsewhere than tmp_path is recorded, not made: the guard keeps a
    regression from replacing the checkout's files while it fails."""
    import mesh.k8s.render as k8s_render

    project = tmp_path / "notes"
    project.mkdir()
    (project / "mesh.toml").write_text((ROOT / "mesh.toml").read_text())
    written: list[Path] = []

    def guarded(out: Path, *args: Any) -> None:
        written.append(out)
        if out.resolve().is_relative_to(tmp_path.resolve()):
            write_manifests(out, *args)

    monkeypatch.setattr(k8s_render, "write_manifests", guarded)
    assert meshctl(["k8s", "render", "--topology", str(project / "mesh.toml")]) == 0
    assert written == [project.resolve() / "deploy" / "k8s"]
    assert (project / "deploy" / "k8s" / "40-edge.yaml").is_file()
    written.clear()  # the control: the shop's own topology still renders the committed copy
    assert meshctl(["k8s", "render", "--topology", str(ROOT / "mesh.toml")]) == 0
    assert written == [DEPLOY_DIR]
