"""Browsers at the edge: gRPC-Web always, CORS for the origins a project names.

Why: a storefront page is a browser app. It calls the edge from its own origin
(`https://shop.example.com` calling `https://api.example.com`, or a dev server on
`http://localhost:5173` calling `localhost:8080`), and the browser lets the page read
the answer only when the edge says that origin may (CORS); and a page cannot speak
gRPC's HTTP/2 trailers, only gRPC-Web (Envoy's `grpc_web` filter turns it into gRPC
for the services).

- **gRPC-Web** (`application/grpc-web`, `-web+proto`, `-web-text`) is always on: it
  reaches exactly what gRPC reaches (the same routes, tokens, limits), so it opens
  nothing. Without CORS only same-origin pages and non-browser clients can use it.
- **CORS** is off unless the project lists origins (`[edge.cors] origins` in
  mesh.toml; exact `scheme://host[:port]` strings, as browsers send them). The edge
  then answers preflights itself for any path, and names the origin in
  `access-control-allow-origin` on every answer to it, errors included (a 401 from a
  missing token, a 413, a 429 of the strict login limit, the transcoder's 404), so a
  page can read why a call failed. Another origin's preflight gets no allow-origin,
  so its browser refuses to send the call; CORS protects users' browsers, never the
  API: a token is what authorises a call.
- No credentials mode (`access-control-allow-credentials`): the shop's end users carry
  a bearer token in `authorization`, never a cookie, so a page of another origin has
  nothing of theirs that a browser would attach. `*` and `null` (sandboxed frames,
  `file:` pages) are refused as origins: list each origin.
- Methods allowed are the contracts' HTTP verbs and POST (gRPC-Web); headers are what
  the shop's calls carry (`authorization`, `content-type`, `accept-version`, gRPC-Web's
  own, W3C trace context); exposed are the gRPC status headers, `retry-after`,
  `www-authenticate` and `x-request-id`.

How Envoy is made to do it: the CORS filter acts only on a request that has a route
when it runs, and a versioned REST path (`/api/v1/...`) or a preflight has none until
the transcoder has turned it into a gRPC path. So a last route (`anchor_route`) matches
what no other route does and carries an `origin`, unless it is gRPC proper: the CORS
filter runs on it (answering preflights at once), then the transcoder rewrites the
path and the router routes again. The router never sends a request on the anchor
(a preflight is answered by the CORS filter; every other request the transcoder has
turned into a gRPC call or refused with 404); if one got there, its cluster has no
endpoint (503). REST bodies keep their size limit on it (`BufferPerRoute`).

Limits: the general per-client rate limit runs before CORS (preflights are counted),
so its 429 carries no allow-origin (the browser reports a CORS error; the limit is an
abuse limit honest pages never meet). An `accept-version` the edge does not serve
answers 400 from a direct response, which CORS does not see either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from base.addresses import is_dns_label, is_ip_literal

CORS_FILTER = "envoy.filters.http.cors"
GRPC_WEB_FILTER = "envoy.filters.http.grpc_web"
# The anchor route's cluster: no endpoint, never sent to (see the module's docstring).
ANCHOR_CLUSTER = "edge_cors_anchor"
DEFAULT_MAX_AGE_S = 600
MAX_AGE_LIMIT_S = 86_400  # Firefox's cap; a longer one would be a typo

_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "accept-version",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
    "x-accept-content-transfer-encoding",
    "x-accept-response-streaming",
    "traceparent",
    "tracestate",
)
_EXPOSE_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "retry-after",
    "www-authenticate",
    "x-request-id",
)
# gRPC proper (`application/grpc`, `+proto`, `;charset`...), not gRPC-Web.
_GRPC_CONTENT_TYPE = r"application/grpc([+;].*)?"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class EdgeCors:
    """Which page origins may call the edge from a browser (`[edge.cors]`); none: CORS off."""

    origins: tuple[str, ...] = ()
    # How long a browser may keep a preflight's answer (Chrome caps it at 7,200 s).
    max_age_s: int = DEFAULT_MAX_AGE_S

    def __post_init__(self) -> None:
        for origin in self.origins:
            origin_problem(origin, raise_it=True)
        if not 0 <= self.max_age_s <= MAX_AGE_LIMIT_S:
            raise ValueError(f"max_age_s must be 0 to {MAX_AGE_LIMIT_S}, not {self.max_age_s}")


NO_CORS = EdgeCors()  # no origin listed: no CORS (gRPC-Web still on)


def origin_problem(origin: str, *, raise_it: bool = False) -> str | None:
    """What is wrong with `origin` as an allowed origin (None: nothing), as a browser
    sends it: a lower-case `http` or `https` scheme and host, a port only when not the
    scheme's default, nothing after. `raise_it` raises ValueError instead."""
    problem = _origin_problem(origin)
    if problem is not None and raise_it:
        raise ValueError(f"origin {origin!r}: {problem}")
    return problem


def _origin_problem(origin: str) -> str | None:
    if origin in ("*", "null"):
        return "list each page's origin (`*` and `null` are refused)"
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError as exc:
        return f"not an origin ({exc})"
    if parts.scheme not in _DEFAULT_PORTS:
        return "expected http://host[:port] or https://host[:port]"
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return "an origin is scheme://host[:port], nothing after it (no path, not even /)"
    host = parts.hostname or ""
    names = host.split(".")
    if not (all(map(is_dns_label, names)) or is_ip_literal(host)) or origin != origin.lower():
        return "expected a lower-case host name or IP address, as browsers send it"
    if port == _DEFAULT_PORTS[parts.scheme]:
        return f"browsers leave the scheme's default port out ({port})"
    return None


def http_filters(cors: EdgeCors) -> list[dict[str, Any]]:
    """The CORS filter (when origins are listed), then gRPC-Web's: before the body limit
    and the transcoder, so that every later refusal carries the allow-origin."""
    filters = []
    if cors.origins:
        filters.append(
            {
                "name": CORS_FILTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
                },
            }
        )
    filters.append(
        {
            "name": GRPC_WEB_FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
            },
        }
    )
    return filters


def virtual_host_policy(cors: EdgeCors, rest_verbs: Iterable[str]) -> dict[str, Any]:
    """The virtual host's `typed_per_filter_config` entry of the CORS policy ({}: off).
    `rest_verbs`: the contracts' HTTP verbs (`get`, `post`...)."""
    if not cors.origins:
        return {}
    methods = sorted({v.upper() for v in rest_verbs} | {"POST"})
    return {
        CORS_FILTER: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": o} for o in cors.origins],
            "allow_methods": ", ".join(methods),
            "allow_headers": ", ".join(_ALLOW_HEADERS),
            "expose_headers": ", ".join(_EXPOSE_HEADERS),
            "max_age": str(cors.max_age_s),
            "allow_credentials": False,
            # Another origin's preflight is answered here (without an allow-origin),
            # not passed on to the transcoder's 404.
            "forward_not_matching_preflights": False,
        }
    }


def anchor_routes(cors: EdgeCors, max_request_body_bytes: int) -> list[dict[str, Any]]:
    """The last route, for what only a browser sends: see the module's docstring."""
    if not cors.origins:
        return []
    return [
        {
            "match": {
                "prefix": "/",
                "headers": [
                    {"name": "origin", "string_match": {"safe_regex": {"regex": ".+"}}},
                    {
                        "name": "content-type",
                        "string_match": {"safe_regex": {"regex": _GRPC_CONTENT_TYPE}},
                        "invert_match": True,
                        "treat_missing_header_as_empty": True,
                    },
                ],
            },
            "route": {"cluster": ANCHOR_CLUSTER, "timeout": "1s"},
            "typed_per_filter_config": {
                "envoy.filters.http.buffer": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3"
                    ".BufferPerRoute",
                    "buffer": {"max_request_bytes": max_request_body_bytes},
                }
            },
        }
    ]


def anchor_clusters(cors: EdgeCors) -> list[dict[str, Any]]:
    """The anchor route's cluster: no endpoint at all."""
    if not cors.origins:
        return []
    return [
        {
            "name": ANCHOR_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": ANCHOR_CLUSTER, "endpoints": []},
        }
    ]
