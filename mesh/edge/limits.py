"""The edge's protective limits, as settings (`MESH_EDGE_*`; README table `mesh-edge`).

Defaults follow Envoy's "Configuring Envoy as an edge proxy" guidance where it
gives a figure (HTTP/2 streams and windows, timeouts, heap thresholds) and are
otherwise sized so that honest traffic never meets them: the per-client limits
are abuse limits, not quotas. One client address driving the whole shop (the
chaos and benchmark tests, a NAT in front of many users) stays well below the
general per-client limit; only the strict limit of sign-up and login (methods
marked `(meshproto.api.v1.rate_limit) = {strict: true}`) is meant to bite.

`meshctl up` reads them from its environment (`edge_limits_from_env`); the
checked-in `envoy/envoy.yaml` is rendered with the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from base.settings import load, number, setting, whole

_POSITIVE = number(above=True)
_AT_LEAST_ONE = whole(minimum=1)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What the edge accepts from one client, how much and how fast."""

    xff_trusted_hops: int = setting(
        "MESH_EDGE_XFF_TRUSTED_HOPS",
        0,
        whole(minimum=0),
        "proxies in front of the edge whose `x-forwarded-for` is trusted (0: the client is "
        "the TCP peer)",
    )
    max_request_headers_kb: int = setting(
        "MESH_EDGE_MAX_REQUEST_HEADERS_KB",
        16,
        _AT_LEAST_ONE,
        "request headers larger than this answer 431 (HTTP/2: the stream is reset); the "
        "services' gRPC limit is 8 KiB (soft) to 16 KiB",
    )
    max_request_body_bytes: int = setting(
        "MESH_EDGE_MAX_REQUEST_BODY_BYTES",
        1024 * 1024,
        _AT_LEAST_ONE,
        "REST bodies larger than this answer 413 (gRPC messages: the services' 4 MiB limit)",
    )
    request_headers_timeout_s: float = setting(
        "MESH_EDGE_REQUEST_HEADERS_TIMEOUT_S",
        10.0,
        _POSITIVE,
        "time a client has to send a request's headers (slowloris)",
    )
    request_timeout_s: float = setting(
        "MESH_EDGE_REQUEST_TIMEOUT_S",
        300.0,
        _POSITIVE,
        "time a client has to send a whole request (off if a public method streams requests)",
    )
    stream_idle_timeout_s: float = setting(
        "MESH_EDGE_STREAM_IDLE_TIMEOUT_S",
        300.0,
        _POSITIVE,
        "a request with no bytes either way this long is reset (streaming routes: never)",
    )
    connection_idle_timeout_s: float = setting(
        "MESH_EDGE_CONNECTION_IDLE_TIMEOUT_S",
        3600.0,
        _POSITIVE,
        "a client connection with no request this long is closed",
    )
    # Not Envoy's suggested 100: the shop's clients are gRPC clients multiplexing many
    # calls on one connection; at 100 the chaos test's 179 in-flight calls queued in
    # the client behind slow orders and idempotent reads missed their deadline.
    max_concurrent_streams: int = setting(
        "MESH_EDGE_MAX_CONCURRENT_STREAMS",
        1000,
        _AT_LEAST_ONE,
        "HTTP/2 streams one client connection may have open",
    )
    max_connections: int = setting(
        "MESH_EDGE_MAX_CONNECTIONS",
        10_000,
        _AT_LEAST_ONE,
        "client connections the edge holds at once (overload manager); more are refused",
    )
    max_heap_bytes: int = setting(
        "MESH_EDGE_MAX_HEAP_BYTES",
        1024**3,
        _AT_LEAST_ONE,
        "Envoy's heap budget: at 95 % it frees memory, at 98 % it refuses new requests (503)",
    )
    client_rate_limit_per_s: int = setting(
        "MESH_EDGE_CLIENT_RATE_LIMIT_PER_S",
        1000,
        _AT_LEAST_ONE,
        "requests per second from one client address (burst the same); more answer 429",
    )
    strict_rate_limit_per_min: int = setting(
        "MESH_EDGE_STRICT_RATE_LIMIT_PER_MIN",
        20,
        _AT_LEAST_ONE,
        "calls per minute from one client address to sign-up/login (strict methods); "
        "more answer 429",
    )
    rate_limit_clients: int = setting(
        "MESH_EDGE_RATE_LIMIT_CLIENTS",
        10_000,
        _AT_LEAST_ONE,
        "client addresses with a bucket of their own (least recently seen dropped first)",
    )


def edge_limits_from_env(env: Mapping[str, str] | None = None) -> EdgeLimits:
    """The limits from `env` (default: os.environ); SettingsError names a bad variable."""
    return load(EdgeLimits, env)
