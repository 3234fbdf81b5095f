"""The rendered NATS config forms a 3-node JetStream cluster: real nats-servers, on loopback.

No cluster exists here, so the three pods become three nats-server processes run with
the ConfigMap's `nats.conf` and the `nats-auth` Secret's `auth.conf` as rendered; only
what a pod gives differently is replaced (its ports, the route addresses that would be
the headless Service's pod names, the PVC's path). A service identity then declares
its stream with MESH_STREAM_REPLICAS=3 (what the manifests set), and the stream keeps
taking events after one server stops: the point of the cluster.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import yaml
from nats.js.errors import APIError, NoStreamResponseError

from mesh.cli import main as meshctl
from mesh.events.nats_connect import NatsClientAuth
from mesh.events.streams import default_streams, ensure_streams
from mesh.k8s.options import K8sOptions
from mesh.k8s.render import render_manifests
from mesh.local.topology import load_topology
from mesh.tools import nats_server_binary
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
