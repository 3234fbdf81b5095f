"""What the edge answers itself, for REST callers: a JSON `google.rpc.Status` body.

Why: a REST caller gets its errors from two places. A service's error comes back
through the transcoder as `{"code": 3, "message": "...", "details": [...]}` with the
HTTP status the transcoder gives its gRPC status. Envoy's own answers (a body the
transcoder cannot parse, a query parameter of the wrong type, a path that names no
method, a body over the limit, a rate limit, a fault injected by a release, no healthy
instance, an overloaded edge) were Envoy's plain text (`Payload Too Large`, `Could not
resolve /x to a method.`, `no healthy upstream`), so a client had to parse two shapes
and could not read a status code from the second. grpc-gateway, which this edge's REST
mapping follows (`google.api.http`), answers every error as a Status body.

How: Envoy's `local_reply_config` rewrites its local replies (never an upstream's
answer). After the end-user token's mappers (`jwt_authn.local_reply_mappers`: 401,
code 16, which must match first), one mapper per HTTP status Envoy may answer with
sets the body to `{"code": <gRPC code>, "message": "<Envoy's text>"}` and the content
type to `application/json`, and a last one gives any other error status code 2
(UNKNOWN), as gRPC does for an HTTP status it has no mapping for. The status code is
kept. Before them a mapper that changes nothing catches gRPC requests (the first
mapper that matches is the only one applied), so only requests that arrived as REST
(`rest_request`) reach the body mappers. Some rejections come with no text at all
(a path with an escaped slash: `{"code": 3, "message": ""}` said nothing); a mapper
matching the cause in the reply's code details gives those a message of their own
(`_UNEXPLAINED`).

The gRPC code is the one whose HTTP status (google/rpc/code.proto's mapping, which the
transcoder uses: `HTTP_OF`) is the reply's status; where several share one (400:
INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE) the first in `GRPC_OF_HTTP` is
taken, and statuses the transcoder never gives map as gRPC maps them (413 and 431 to
RESOURCE_EXHAUSTED, what gRPC answers for a message over its limit; 408 to
DEADLINE_EXCEEDED; 502 to UNAVAILABLE). Limit: a REST fault injected with
FAILED_PRECONDITION or OUT_OF_RANGE answers 400 with code 3, and DATA_LOSS or UNKNOWN
500 with code 13: the body can only follow the status.

gRPC callers are untouched: Envoy answers them trailers-only with `grpc-status` (from
the HTTP status: 503 is 14) and its text as `grpc-message`, which is what gRPC clients
read. A transcoded request counts as REST (`x-envoy-original-path`): Envoy decides at
arrival that it is not gRPC, so its local reply is an HTTP one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The gRPC status codes (grpc/status.h).
GRPC_CODES = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

# The HTTP status of each gRPC status, as Envoy's transcoder maps them.
HTTP_OF = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# The gRPC code a local reply's body gives for its HTTP status (module doc).
GRPC_OF_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
OTHER_ERRORS = "UNKNOWN"


def rest_request() -> dict[str, Any]:
    """A request that arrived as REST: not gRPC, or transcoded (the transcoder keeps the
    original path in `x-envoy-original-path`). Envoy decides at arrival whether a local
    reply is gRPC-shaped, so a transcoded request gets an HTTP one. A request with no
    content type at all (a plain `curl` GET) is REST too: an absent header matches no
    matcher, inverted or not, unless it counts as empty (until 7 Dec 2026 such a GET
    refused before the transcoder ran, e.g. with an unknown `accept-version`, got
    Envoy's plain text)."""
    return {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                            "treat_missing_header_as_empty": True,
                        }
                    }
                },
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-path", "present_match": True}
                    }
                },
            ]
        }
    }


def status_body(code: str) -> dict[str, Any]:
    """A mapper's JSON `google.rpc.Status` body of gRPC status `code`, Envoy's text as
    its message."""
    return {
        "json_format": {"code": GRPC_CODES[code], "message": "%LOCAL_REPLY_BODY%"},
        "content_type": "application/json",
    }


def status_filter(op: str, value: int, runtime_key: str) -> dict[str, Any]:
    """An access-log filter on the reply's status (`op` EQ, GE or LE `value`; Envoy
    requires a runtime key that could override the value)."""
    return {
        "status_code_filter": {
            "comparison": {
                "op": op,
                "value": {"default_value": value, "runtime_key": runtime_key},
            }
        }
    }


def _grpc_request() -> dict[str, Any]:
    """A request that is still gRPC (the negation of `rest_request`)."""
    return {
        "and_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                        }
                    }
                },
                {
                    "header_filter": {
                        "header": {
                            "name": "x-envoy-original-path",
                            "present_match": True,
                            "invert_match": True,
                        }
                    }
                },
            ]
        }
    }


# Envoy's rejections that come with no text, and what they mean: (the HTTP status,
# a filter that picks the cause out, the message said instead). The request's :path
# cannot tell: Envoy has unescaped it by the time it answers, so the cause is read
# from the response's code details (a CEL filter, Envoy's standard build).
_UNEXPLAINED = [
    (
        400,
        # hardening.py's `normalize_path`, `path_with_escaped_slashes_action: REJECT_REQUEST`.
        {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": "response.code_details == 'path_normalization_failed'",
                },
            }
        },
        # No '%' in a message: Envoy would read it as a format operator.
        "the path could not be normalised: an escaped slash or backslash is refused",
    ),
]


def local_reply_config(first: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The connection manager's `local_reply_config`: the mappers `first` (which must
    match before any other, e.g. the token check's), then a Status body for every REST
    error reply (module doc); a rejection Envoy gives no text (`_UNEXPLAINED`) gets one."""
    # The first mapper that matches is the only one applied: a gRPC request stops at
    # one that changes nothing, so the ones after it need not ask again.
    mappers = [*first, {"filter": _grpc_request()}]
    mappers += [
        {
            "filter": {
                "and_filter": {
                    "filters": [status_filter("EQ", http, f"mesh.local_reply.{http}"), cause]
                }
            },
            "body_format_override": {
                "json_format": {"code": GRPC_CODES[GRPC_OF_HTTP[http]], "message": text},
                "content_type": "application/json",
            },
        }
        for http, cause, text in _UNEXPLAINED
    ]
    mappers += [
        {
            "filter": status_filter("EQ", http, f"mesh.local_reply.{http}"),
            "body_format_override": status_body(code),
        }
        for http, code in GRPC_OF_HTTP.items()
    ]
    other = status_filter("GE", 400, "mesh.local_reply.other_errors")
    mappers.append({"filter": other, "body_format_override": status_body(OTHER_ERRORS)})
    return {"mappers": mappers}
