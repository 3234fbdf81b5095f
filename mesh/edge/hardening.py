"""Envoy's edge-proxy guidance, applied to the rendered bootstrap (`harden`).

`envoy_config.render` builds routes and clusters from the contracts; this module
adds what makes the listener safe to face the internet ("Configuring Envoy as an
edge proxy" in Envoy's docs), with figures from `EdgeLimits`:

- The client is the TCP peer (`use_remote_address`, `xff_trusted_hops` proxies
  in front trusted) and no address is internal, so Envoy treats every caller as
  external: it drops `x-envoy-*` control headers such as
  `x-envoy-upstream-rq-timeout-ms` or `x-envoy-retry-on` instead of obeying them.
- Paths are normalised before routing (RFC 3986 dot segments, `//` merged), so
  `/api/v1/../..` or `//api` cannot reach what the route table does not name;
  an escaped slash (`%2F`, `%5C`) is rejected (400): no route of the shop has
  one, and a redirect would only be followed by browsers, not by gRPC or JSON
  clients. Header names with `_` are rejected (400): a backend might read
  `x_mesh_user_id` as `x-mesh-user-id` behind the edge's back.
- Sizes: request headers (431 over HTTP/1.1, a reset over HTTP/2) and REST bodies
  (413 from Envoy's buffer filter, see `_body_limit`; the transcoder's own
  `max_request_body_size` let a 3 MiB body through in Envoy 1.40); gRPC messages
  stream through under HTTP/2 flow control and the services refuse one over
  4 MiB with RESOURCE_EXHAUSTED; 32 KiB connection buffers; HTTP/2 streams and
  windows per connection (1,000 streams, not the guide's 100: see EdgeLimits).
- Timeouts: request headers (slowloris), the whole request (only when no public
  method streams requests: there is no per-route override), idle streams
  (routes with no timeout, the streaming ones, are exempt: a watch may be
  quiet for hours) and idle connections. No `max_stream_duration`: unary routes
  have their route timeout and streams are unbounded by design. None of them is
  shorter than a route's timeout, so they never cut in on retries or hedges.
- The overload manager: heap thresholds (free memory, then refuse requests)
  and a cap on client connections.
- Per-client rate limits keyed by the remote address (Envoy's local rate limit
  with one dynamic token bucket per address, least recently used dropped
  first): a general one for every request, checked before the transcoder, and a
  strict one for the methods the contracts mark `rate_limit.strict` (sign-up,
  login), checked after it so REST and gRPC calls of a method share one gRPC
  path. Over the limit: 429 with `retry-after` (gRPC: RESOURCE_EXHAUSTED).
  Limits are per Envoy process: N edges let a client N times as much.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from mesh.edge.limits import EdgeLimits
from mesh.edge.model import EdgeModel

_HCM = "envoy.filters.network.http_connection_manager"
_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
_BUFFER = "envoy.filters.http.buffer"
_BUFFER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3"
_RATE_LIMIT_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)
# Envoy's guidance for connection buffers (listener and upstream).
BUFFER_LIMIT_BYTES = 32 * 1024
# Envoy's guidance for HTTP/2 flow control, downstream and upstream.
STREAM_WINDOW_BYTES = 64 * 1024
CONNECTION_WINDOW_BYTES = 1024 * 1024
# Overload manager thresholds on the heap (share of `max_heap_bytes`).
SHRINK_HEAP_AT = 0.95
STOP_REQUESTS_AT = 0.98
_REMOTE_ADDRESS = "remote_address"
_STRICT_KEY = "strict_method"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def strict_methods(model: EdgeModel) -> dict[str, list[str]]:
    """The strict methods: their unversioned gRPC path (one bucket per method and
    client, whichever major is called) -> every gRPC path it is called by. The
    router rewrites an unversioned path only after the rate limit has seen it."""
    found: dict[str, set[str]] = {}
    for svc in model.public:
        for m in svc.methods:
            if m.strict_rate_limit:
                key = f"/{svc.unversioned_name}/{m.name}"
                found.setdefault(key, {key}).add(f"/{svc.full_name}/{m.name}")
    return {key: sorted(paths) for key, paths in sorted(found.items())}


def _bucket(tokens: int, fill_interval_s: float, per_fill: int | None = None) -> dict[str, Any]:
    return {
        "max_tokens": tokens,
        "tokens_per_fill": tokens if per_fill is None else per_fill,
        "fill_interval": f"{fill_interval_s:.3f}s",
    }


def _retry_after(seconds: int) -> list[dict[str, Any]]:
    return [
        {
            "header": {"key": "retry-after", "value": str(seconds)},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]


def _per_client(limits: EdgeLimits) -> dict[str, Any]:
    """Additions to the general rate limit filter: one bucket per client address.

    A descriptor entry with an empty value is a wildcard: each address gets a
    bucket of its own (at most `rate_limit_clients`). The filter's own bucket
    (the edge-wide limit) is still consumed by every request."""
    rate = limits.client_rate_limit_per_s
    return {
        "descriptors": [
            {
                "entries": [{"key": _REMOTE_ADDRESS, "value": ""}],
                "token_bucket": _bucket(rate, 1.0),
            }
        ],
        "rate_limits": [{"actions": [{"remote_address": {}}]}],
        "max_dynamic_descriptors": limits.rate_limit_clients,
        "response_headers_to_add": _retry_after(1),
    }


def strict_rate_limit_filter(model: EdgeModel, limits: EdgeLimits) -> dict[str, Any] | None:
    """The rate limit filter of the strict methods, or None if the contracts mark none.

    Each strict method has a bucket per client address: `strict_rate_limit_per_min`
    calls, refilled one at a time, so a client that waits `retry-after` seconds
    may try once more."""
    methods = strict_methods(model)
    if not methods:
        return None
    per_min = limits.strict_rate_limit_per_min
    interval = 60.0 / per_min
    descriptors = []
    rate_limits = []
    for key, paths in methods.items():
        descriptors.append(
            {
                "entries": [
                    {"key": _STRICT_KEY, "value": key},
                    {"key": _REMOTE_ADDRESS, "value": ""},
                ],
                "token_bucket": _bucket(per_min, interval, 1),
            }
        )
        regex = "^(" + "|".join(re.escape(p) for p in paths) + ")$"
        path_match = {"name": ":path", "string_match": {"safe_regex": {"regex": regex}}}
        rate_limits.append(
            {
                "actions": [
                    {
                        "header_value_match": {
                            "descriptor_key": _STRICT_KEY,
                            "descriptor_value": key,
                            "headers": [path_match],
                        }
                    },
                    {"remote_address": {}},
                ]
            }
        )
    return {
        "name": "envoy.filters.http.local_ratelimit.strict",
        "typed_config": {
            "@type": _RATE_LIMIT_TYPE,
            "stat_prefix": "edge_strict_rate_limit",
            # Only requests with a strict descriptor are limited here.
            "token_bucket": _bucket(1_000_000_000, 1.0),
            "always_consume_default_token_bucket": False,
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "descriptors": descriptors,
            "rate_limits": rate_limits,
            "max_dynamic_descriptors": limits.rate_limit_clients,
            "rate_limited_as_resource_exhausted": True,
            "response_headers_to_add": _retry_after(math.ceil(interval)),
        },
    }


def _accepts_streamed_requests(model: EdgeModel) -> bool:
    return any(m.client_streaming for s in model.public for m in s.methods)


def _connection_manager(hcm: dict[str, Any], model: EdgeModel, limits: EdgeLimits) -> None:
    hcm.update(
        {
            "use_remote_address": True,
            "xff_num_trusted_hops": limits.xff_trusted_hops,
            # No `internal_address_config`: since Envoy 1.33 (runtime guard
            # explicit_internal_address_config) no address is internal by default,
            # loopback and RFC 1918 included, so every client is external and its
            # x-envoy-* control headers are dropped, not obeyed. An explicit config
            # with no ranges would bring back the old RFC 1918 + loopback default.
            "strip_trailing_host_dot": True,
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "max_request_headers_kb": limits.max_request_headers_kb,
            "request_headers_timeout": _seconds(limits.request_headers_timeout_s),
            "stream_idle_timeout": _seconds(limits.stream_idle_timeout_s),
            "request_timeout": "0s"
            if _accepts_streamed_requests(model)
            else _seconds(limits.request_timeout_s),
            "common_http_protocol_options": {
                "idle_timeout": _seconds(limits.connection_idle_timeout_s),
                "headers_with_underscores_action": "REJECT_REQUEST",
            },
            "http2_protocol_options": {
                "max_concurrent_streams": limits.max_concurrent_streams,
                "initial_stream_window_size": STREAM_WINDOW_BYTES,
                "initial_connection_window_size": CONNECTION_WINDOW_BYTES,
            },
        }
    )
    filters: list[dict[str, Any]] = hcm["http_filters"]
    for f in filters:
        if f["name"] == _RATE_LIMIT:
            f["typed_config"].update(_per_client(limits))
    strict = strict_rate_limit_filter(model, limits)
    if strict is not None:
        at = next(i for i, f in enumerate(filters) if f["name"] == _TRANSCODER)
        filters.insert(at + 1, strict)
    at = next(i for i, f in enumerate(filters) if f["name"] == _TRANSCODER)
    filters.insert(at, _body_limit(limits))
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            per_filter = route.setdefault("typed_per_filter_config", {})
            # Not a REST route (no transcoder of its own, no buffer setting of its own:
            # the CORS anchor route keeps the limit, mesh/edge/browsers.py).
            if _TRANSCODER not in per_filter:
                per_filter.setdefault(
                    _BUFFER, {"@type": f"{_BUFFER_TYPE}.BufferPerRoute", "disabled": True}
                )
            action = route.get("route")
            # A route without a timeout carries streams: the idle timeout is not theirs.
            if action is not None and action.get("timeout") == "0s":
                action.setdefault("idle_timeout", "0s")


def _body_limit(limits: EdgeLimits) -> dict[str, Any]:
    """REST bodies are read whole before transcoding, up to the limit (413 beyond).

    Only REST requests: a versioned REST path matches no route before the
    transcoder has turned it into a gRPC path, an unversioned one matches a
    route with its own transcoder; every other route (gRPC, reflection, health)
    disables the buffer, so streams are never held back. A gRPC message is
    bounded by the services' own limit (4 MiB, RESOURCE_EXHAUSTED beyond) and
    passes under HTTP/2 flow control, never whole in the edge's memory."""
    return {
        "name": _BUFFER,
        "typed_config": {
            "@type": f"{_BUFFER_TYPE}.Buffer",
            "max_request_bytes": limits.max_request_body_bytes,
        },
    }


def _upstream_http2(cluster: dict[str, Any]) -> None:
    for options in cluster.get("typed_extension_protocol_options", {}).values():
        http2 = options.get("explicit_http_config", {}).get("http2_protocol_options")
        if http2 is not None:
            http2["initial_stream_window_size"] = STREAM_WINDOW_BYTES
            http2["initial_connection_window_size"] = CONNECTION_WINDOW_BYTES


def overload_manager(limits: EdgeLimits) -> dict[str, Any]:
    """Heap thresholds (fixed_heap) and a cap on client connections."""
    heap = "envoy.resource_monitors.fixed_heap"

    def action(name: str, threshold: float) -> dict[str, Any]:
        return {"name": name, "triggers": [{"name": heap, "threshold": {"value": threshold}}]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                    ".fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": limits.max_heap_bytes,
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                    ".downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": limits.max_connections,
                },
            },
        ],
        "actions": [
            action("envoy.overload_actions.shrink_heap", SHRINK_HEAP_AT),
            action("envoy.overload_actions.stop_accepting_requests", STOP_REQUESTS_AT),
        ],
    }


def harden(bootstrap: dict[str, Any], model: EdgeModel, limits: EdgeLimits) -> dict[str, Any]:
    """A hardened copy of the rendered bootstrap (the input is left as it was)."""
    out = copy.deepcopy(bootstrap)  # keeps shared parts shared (one HCM, two listeners)
    resources = out["static_resources"]
    seen: set[int] = set()
    for listener in resources["listeners"]:
        listener["per_connection_buffer_limit_bytes"] = BUFFER_LIMIT_BYTES
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hcm = f["typed_config"]
                if f["name"] == _HCM and id(hcm) not in seen:
                    seen.add(id(hcm))
                    _connection_manager(hcm, model, limits)
    for cluster in resources["clusters"]:
        cluster["per_connection_buffer_limit_bytes"] = BUFFER_LIMIT_BYTES
        _upstream_http2(cluster)
    out["overload_manager"] = overload_manager(limits)
    return out
