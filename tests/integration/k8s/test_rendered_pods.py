"""Rendered pods run as processes: the NATS cluster, and a service from its Deployment.

No cluster exists here, so a pod becomes a process run with what the manifests give it:
its command, its env (downward-API fields and Secret keys resolved as the kubelet does),
its mounted Secrets (written by `meshctl k8s secrets`) and ConfigMaps. Only what a pod
has of its own is replaced (ports, addresses, paths of mounts and volumes).

- NATS: three nats-servers run the ConfigMap's `nats.conf` and the `nats-auth` Secret; a
  service identity declares its stream with MESH_STREAM_REPLICAS=3 (what the manifests
  set), and the stream keeps taking events after its leader's server stops.
- payments: started from its Deployment (Consul-API test agent for the node's agent with
  the `consul` identity, SQLite for its PostgreSQL, certificates as cert-manager issues
  them from the rendered Certificates), its readiness and liveness probes answer 200
  and the agent's TLS gRPC check passes; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.js.errors import APIError, NoStreamResponseError

from mesh.cli import main as meshctl
from mesh.events.nats_connect import NatsClientAuth
from mesh.events.streams import default_streams, ensure_streams
from mesh.k8s.certificates import ISSUER
from mesh.k8s.options import K8sOptions
from mesh.k8s.render import render_manifests
from mesh.local.topology import load_topology
from mesh.tools import nats_server_binary
from tests.support import cert_manager
from tests.support.consul_agent import AgentTls, consul_test_agent
from tests.support.poll import eventually
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]


def _local_config(rendered: str, i: int, ports: list[tuple[int, int, int]], store: Path) -> str:
    client, monitor, cluster = ports[i]
    routes = ", ".join(f"nats://127.0.0.1:{c}" for _, _, c in ports)
    text = rendered.replace("port: 4222", f"host: 127.0.0.1\nport: {client}")
    text = text.replace("http_port: 8222", f"http: 127.0.0.1:{monitor}")
    text = text.replace("  port: 6222", f"  host: 127.0.0.1\n  port: {cluster}")
    text = re.sub(r"routes: \[[^\]]*\]", f"routes: [{routes}]", text)
    return text.replace("store_dir: /data", f"store_dir: {store}")


def _ready(monitor: int) -> bool:
    try:
        url = f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@dataclass
class Cluster:
    procs: list[subprocess.Popen[bytes]]
    client_ports: list[int]
    monitor_ports: list[int]
    material: Path  # `meshctl k8s secrets`' directory: the identities' seeds


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    material = tmp_path / "material"
    assert meshctl(["k8s", "secrets", "--material", str(material)]) == 0
    secrets = list(yaml.safe_load_all((material / "secrets.yaml").read_text()))
    auth = next(d for d in secrets if d and d["metadata"]["name"] == "nats-auth")
    files = render_manifests(load_topology(ROOT / "mesh.toml"), K8sOptions())
    config = next(d for d in files[Path("10-nats.yaml")] if d["metadata"]["name"] == "nats-config")[
        "data"
    ]["nats.conf"]
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    procs = []
    try:
        for i in range(3):
            node = tmp_path / f"nats-{i}"
            (node / "auth").mkdir(parents=True)
            (node / "auth" / "auth.conf").write_text(auth["stringData"]["auth.conf"])
            (node / "nats.conf").write_text(_local_config(config, i, ports, node / "data"))
            log = (node / "log").open("wb")
            procs.append(
                subprocess.Popen(
                    [nats_server_binary(), "--config", str(node / "nats.conf")],
                    env={**os.environ, "POD_NAME": f"nats-{i}"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        yield Cluster(procs, [p[0] for p in ports], [p[1] for p in ports], material)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            p.wait(timeout=30)


async def test_rendered_nats_config_runs_a_jetstream_cluster_with_replicated_streams(
    cluster: Cluster,
) -> None:
    procs, client_ports, material = cluster.procs, cluster.client_ports, cluster.material
    monitors = cluster.monitor_ports
    await eventually(lambda: all(_ready(m) for m in monitors), 60, "three ready servers")
    auth = NatsClientAuth.for_identity(
        "orders", nkey_seed_file=str(material / "nats" / "orders.nk")
    )
    servers = [f"nats://127.0.0.1:{p}" for p in client_ports]
    nc = await nats.connect(servers=servers, max_reconnect_attempts=-1, **auth.connect_options())
    try:
        js = nc.jetstream()
        order = [s for s in default_streams(["order"], replicas=3) if s.name == "ORDER"]

        async def declared() -> bool:
            try:
                await ensure_streams(js, order)
            except (APIError, nats.errors.TimeoutError):
                return False  # no JetStream meta leader yet
            return True

        await eventually(declared, 60, "ORDER declared as R3 by the orders identity")
        info = await js.stream_info("ORDER")
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2

        # A stream wider than the cluster is refused: R3 is what three servers can hold.
        wide = [s for s in default_streams(["order"], replicas=5) if s.name == "ORDER"]
        with pytest.raises(APIError):
            await ensure_streams(js, wide)

        ack = await js.publish("order.created", b"1", timeout=5)
        assert ack.stream == "ORDER"
        leader = info.cluster.leader
        victim = next(i for i in range(3) if f"nats-{i}" == leader)
        procs[victim].terminate()
        procs[victim].wait(timeout=30)

        async def published() -> bool:
            try:
                await js.publish("order.created", b"2", timeout=2)
            except (APIError, NoStreamResponseError, nats.errors.TimeoutError):
                return False  # a new stream leader is being elected
            return True

        await eventually(published, 60, "publish after the leader's server stopped")
        after = await js.stream_info("ORDER")
        assert after.state.messages == 2
        assert after.cluster is not None and after.cluster.leader != leader
    finally:
        await nc.close()


def _pod_env(
    container: dict[str, Any], values: dict[str, str], secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The container's env as the kubelet would give it: downward-API fields and Secret
    keys resolved, `$(VAR)` expanded from earlier entries, then `values` overriding what
    a pod has of its own (its ports, addresses, mount paths)."""
    fields = {"metadata.name": "payments-blue-7c9d-x2x4q", "status.podIP": "127.0.0.1",
              "status.hostIP": "127.0.0.1"}  # fmt: skip
    env: dict[str, str] = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], e["value"])
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return {**env, **values}


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


async def test_a_service_starts_from_its_rendered_deployment_and_passes_its_probes(
    cluster: Cluster, tmp_path: Path
) -> None:
    """payments' rendered Deployment, run as a process: its env (Consul agent on the
    node, NATS with its seed, the PKI Secret's files), its probes answering, and the
    Consul agent's TLS gRPC check (as the `consul` identity) passing. Stand-ins: the
    Consul-API test agent for the node's agent, SQLite for its PostgreSQL, and
    tests/support/cert_manager.py for cert-manager (the certificates chain through the
    `mesh-issuer` intermediate that `meshctl k8s secrets` made)."""
    monitors = cluster.monitor_ports
    await eventually(lambda: all(_ready(m) for m in monitors), 60, "three ready servers")
    docs = render_manifests(load_topology(ROOT / "mesh.toml"), K8sOptions())
    dep = next(d for d in docs[Path("30-payments.yaml")] if d["kind"] == "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    made = {
        d["metadata"]["name"]: d["stringData"]
        for d in yaml.safe_load_all((cluster.material / "secrets.yaml").read_text())
        if d
    }
    # The identities' Secrets, as cert-manager issues them from the rendered Certificates.
    made |= cert_manager.issue_all(docs[Path("05-certificates.yaml")], made[ISSUER])
    mounts = {}
    for volume in dep["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            data = made[volume["secret"]["secretName"]]
            mounts[volume["name"]] = cert_manager.mount(volume, data, tmp_path / volume["name"])
    pki = made["consul-pki"]  # the agent reads cert-manager's key names (consul-values.yaml)
    tls = AgentTls(pki["ca.crt"].encode(), pki["tls.crt"].encode(), pki["tls.key"].encode())
    grpc_port, admin_port = free_port(), free_port()
    async with consul_test_agent(tls=tls) as agent:
        env = _pod_env(
            container,
            {
                "CONSUL_HTTP_ADDR": agent.address,
                "MESH_HOST": "127.0.0.1",
                "MESH_GRPC_PORT": str(grpc_port),
                "MESH_ADMIN_PORT": str(admin_port),
                "MESH_PKI_DIR": str(mounts["pki"]),
                "NATS_NKEY_SEED_FILE": str(mounts["nats-seed"] / "seed"),
                "NATS_URL": f"nats://127.0.0.1:{cluster.client_ports[0]}",  # Service `nats`
                "MESH_DATA_DIR": str(tmp_path / "data"),
                "PAYMENTS_DATABASE_URL": "",  # SQLite under MESH_DATA_DIR
            },
            made,
        )
        assert env["MESH_STREAM_REPLICAS"] == "3" and env["MESH_TRACK"] == "blue"
        log = (tmp_path / "payments.log").open("wb")
        python, *args = container["command"]
        assert python == "python"  # the image's; here the test's interpreter
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env={**env, "PATH": os.environ["PATH"]},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            readiness = container["readinessProbe"]["httpGet"]["path"]
            liveness = container["livenessProbe"]["httpGet"]["path"]
            url = f"http://127.0.0.1:{admin_port}"
            await eventually(
                lambda: _get(url + readiness) == 200, 90, "the readiness probe", interval_s=0.2
            )
            assert _get(url + liveness) == 200

            def fetch() -> list[dict[str, Any]]:
                health = f"http://{agent.address}/v1/health/service/payments?passing"
                with urllib.request.urlopen(health, timeout=2) as r:
                    entries: list[dict[str, Any]] = json.load(r)
                return entries

            async def passing() -> bool:
                # In a thread: the agent answers on this test's event loop.
                entries = await asyncio.to_thread(fetch)
                return any(e["Service"]["Port"] == grpc_port for e in entries)

            await eventually(passing, 60, "Consul's TLS gRPC check passing", interval_s=0.2)
        finally:
            if proc.returncode is None:
                proc.terminate()
            code = await asyncio.wait_for(proc.wait(), 60)
        assert code == 0, (tmp_path / "payments.log").read_text()[-3000:]
