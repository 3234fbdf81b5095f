"""End-user authentication at the edge: Envoy's `jwt_authn`, rendered from the contracts.

Which requests need a token comes from each public method's
`(meshproto.api.v1.auth)` option (`mesh.api.options.auth_of`):

- `ACCESS_PUBLIC`: no token needed. A token that IS sent must verify (Envoy's
  `requires_any: [provider, allow_missing]`): a bad token answers 401 even on a
  public route, so a client learns its token is bad instead of being silently
  treated as anonymous; a valid one still sets the end-user headers.
- `ACCESS_USER`, `ACCESS_ROLES`, no option at all, and every path that no rule
  names (meta routes aside): a verified token is required (the last rule is a
  catch-all `/` prefix, so a route added without a rule fails closed). Roles are
  checked by the services (the edge does not refuse on roles: one place decides).

The filters sit AFTER the gRPC-JSON transcoder, so they see every request as
gRPC (`/pkg.Service/Method`): a REST binding (`POST /api/v1/orders`) is already
rewritten to its method when the rules match, and one rule covers the method
for gRPC, REST and the unversioned REST twins. Unversioned gRPC names
(`/shop.orders.OrderService/X`, rewritten by the router later) get their own
rule: public only when the method is public in every major that serves it.

Verified claims reach the services as headers (gRPC metadata): `x-mesh-user-id`
(`sub`) and `x-mesh-roles` (the `roles` array, comma-joined). Envoy's
`claim_to_headers` copies only scalar claims, so a small Lua filter reads the
payload that `jwt_authn` leaves in dynamic metadata (`payload_in_metadata`).
A `header_mutation` filter before `jwt_authn` removes client-supplied copies of
both headers on every route (public ones included), and the Lua filter removes
them again before it sets them: if the script ever failed, the request would go
on without them (anonymous), never with the client's. `forward: false`: the
token itself does not travel upstream.

Keys: `remote_jwks` fetched from the `jwks` cluster, whose endpoints are the
token issuer's instances at the admin port they register (`admin_port` in the
registry meta; `mesh.edge.sync` writes the file-based EDS). Fetched at start in
the background (`async_fetch` with `fast_listener`: the listener does not wait
for the issuer), refetched every `failed_refetch_s` until it succeeds, then kept
`jwks_cache_s` (the issuer publishes a key that long before it signs with it, so
an unknown `kid` is a forged token, not a rotation race). Limit: the admin port
is plain HTTP inside the mesh; whoever can answer on it can publish keys.

Failures: 401 with `WWW-Authenticate: Bearer ...` (set by `jwt_authn`). Envoy
answers a gRPC request (and, after transcoding, a REST one) with grpc-status 16
UNAUTHENTICATED; the transcoder (`convert_grpc_status`) turns that into HTTP 401
with the JSON `google.rpc.Status` body `{"code":16,"message":...}` for REST.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mesh.api.options import Access
from mesh.edge.local_replies import rest_request, status_body, status_filter
from mesh.edge.model import EdgeModel, Method

FILTER = "envoy.filters.http.jwt_authn"
PROVIDER = "end_user"
JWKS_CLUSTER = "jwks"
PAYLOAD_KEY = "jwt_payload"
FAILURE_KEY = "jwt_failure"
USER_HEADER = "x-mesh-user-id"
ROLES_HEADER = "x-mesh-roles"
_TYPE = "type.googleapis.com/envoy.extensions.filters.http"
# An edge with no issuer: Envoy refuses an empty key set, so it gets one Ed25519 key
# no one holds. Its `x` is a hash of a fixed sentence ("nothing up my sleeve"): signing
# for it would need the discrete logarithm of a point nobody chose (or, if the bytes
# are no curve point, nothing verifies at all). No token verifies; nothing is fetched.
_NO_ONES_KEY = hashlib.sha256(b"shop-mesh edge: no issuer, no key anyone holds").digest()
NO_KEYS = json.dumps(
    {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": "no-issuer",
                "x": base64.urlsafe_b64encode(_NO_ONES_KEY).rstrip(b"=").decode(),
            }
        ]
    }
)


@dataclass(frozen=True, slots=True)
class EdgeAuthOptions:
    """Who issues end-user tokens and where its keys are.

    The defaults are the reference issuer's (`services/users`: `iss` shop-mesh/users,
    `aud` shop-mesh, the JWKS at `/.well-known/jwks.json` on the admin port of the
    registry service `users`); another issuer changes them here, not in mesh code.
    `enabled=False` renders no end-user auth at all: only for tests of routing with
    stand-in upstreams, never for an edge that faces clients. `jwks_service=""` is an
    edge with no issuer (a project's `[edge]` without `[edge.auth]`): the rules stay,
    the provider's key set is inline and holds only a key no one holds (`NO_KEYS`), so
    no token verifies (401 wherever one is needed or sent) and nothing is fetched (no
    key-fetch failures logged).
    """

    enabled: bool = True
    issuer: str = "shop-mesh/users"
    audiences: tuple[str, ...] = ("shop-mesh",)
    jwks_service: str = "users"  # registry service whose instances serve the JWKS
    jwks_port_meta: str = "admin_port"  # registry meta key of the port serving it
    jwks_path: str = "/.well-known/jwks.json"
    jwks_cache_s: int = 300  # = the issuer's Cache-Control max-age
    failed_refetch_s: float = 1.0
    fetch_timeout_s: float = 2.0
    clock_skew_s: int = 30  # at least 1: Envoy reads 0 as its own default, 60


# An edge that trusts no issuer: a project's `[edge]` without `[edge.auth]`.
NO_ISSUER = EdgeAuthOptions(issuer="", audiences=(), jwks_service="")


def _fetches_keys(auth: EdgeAuthOptions) -> bool:
    return auth.enabled and bool(auth.jwks_service)


def jwks_sources(auth: EdgeAuthOptions) -> dict[str, tuple[str, str]]:
    """Extra EDS clusters for the endpoint sync: cluster -> (registry service, meta port key)."""
    if not _fetches_keys(auth):
        return {}
    return {JWKS_CLUSTER: (auth.jwks_service, auth.jwks_port_meta)}


def _public(methods: list[Method]) -> bool:
    return all(m.auth is not None and m.auth.access is Access.PUBLIC for m in methods)


def login_required(model: EdgeModel) -> bool:
    """Whether any method the edge routes needs a verified token."""
    return any(not _public([m]) for svc in model.public for m in svc.methods)


def public_paths(model: EdgeModel) -> list[str]:
    """gRPC paths (versioned and unversioned) that need no token, sorted."""
    paths: set[str] = set()
    by_unversioned: dict[str, list[Method]] = {}
    for svc in model.public:
        for m in svc.methods:
            if _public([m]):
                paths.add(f"/{svc.full_name}/{m.name}")
            by_unversioned.setdefault(f"/{svc.unversioned_name}/{m.name}", []).append(m)
    paths.update(p for p, ms in by_unversioned.items() if _public(ms))
    return sorted(paths)


def _optional_token() -> dict[str, Any]:
    return {"requires_any": {"requirements": [{"provider_name": PROVIDER}, {"allow_missing": {}}]}}


def jwt_filter(
    model: EdgeModel, auth: EdgeAuthOptions, open_prefixes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The `jwt_authn` filter: the provider and one rule per public path, then the
    catch-all that requires a token. `open_prefixes` (reflection, health) are public."""
    if auth.clock_skew_s < 1:
        raise ValueError(
            f"clock_skew_s={auth.clock_skew_s}: at least 1 (Envoy reads 0 as its default, 60 s)"
        )
    rules: list[dict[str, Any]] = [
        {"match": {"path": p}, "requires": _optional_token()} for p in public_paths(model)
    ]
    rules += [{"match": {"prefix": p}, "requires": _optional_token()} for p in open_prefixes]
    rules.append({"match": {"prefix": "/"}, "requires": {"provider_name": PROVIDER}})
    keys: dict[str, Any] = (
        {"remote_jwks": _remote_jwks(auth)}
        if _fetches_keys(auth)
        else {"local_jwks": {"inline_string": NO_KEYS}}
    )
    claims = {"issuer": auth.issuer, "audiences": list(auth.audiences)}
    provider = {
        **{k: v for k, v in claims.items() if v},  # none without an issuer
        **keys,
        # Only the Authorization header: a token in a query parameter ends up in logs.
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": False,
        "payload_in_metadata": PAYLOAD_KEY,
        "failed_status_in_metadata": FAILURE_KEY,
        "clock_skew_seconds": auth.clock_skew_s,
    }
    return {
        "name": FILTER,
        "typed_config": {
            "@type": f"{_TYPE}.jwt_authn.v3.JwtAuthentication",
            "providers": {PROVIDER: provider},
            "rules": rules,
        },
    }


def _remote_jwks(auth: EdgeAuthOptions) -> dict[str, Any]:
    return {
        "http_uri": {
            "uri": f"http://{JWKS_CLUSTER}{auth.jwks_path}",
            "cluster": JWKS_CLUSTER,
            "timeout": f"{auth.fetch_timeout_s:g}s",
        },
        "cache_duration": f"{auth.jwks_cache_s}s",
        "async_fetch": {
            "fast_listener": True,
            "failed_refetch_duration": f"{auth.failed_refetch_s:g}s",
        },
        "retry_policy": {
            "num_retries": 2,
            "retry_back_off": {"base_interval": "0.2s", "max_interval": "1s"},
        },
    }


def _strip_filter() -> dict[str, Any]:
    """Client-supplied end-user headers removed before `jwt_authn` runs."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": f"{_TYPE}.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [
                    {"remove": USER_HEADER},
                    {"remove": ROLES_HEADER},
                ]
            },
        },
    }


_LUA = f"""
-- The verified token's claims as end-user headers (mesh/edge/jwt_authn.py).
function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("{USER_HEADER}")
  headers:remove("{ROLES_HEADER}")
  local meta = handle:streamInfo():dynamicMetadata():get("{FILTER}")
  if meta == nil then return end
  local payload = meta["{PAYLOAD_KEY}"]
  if type(payload) ~= "table" then return end
  local sub = payload["sub"]
  if type(sub) ~= "string" or sub == "" then return end
  headers:add("{USER_HEADER}", sub)
  local roles = payload["roles"]
  if type(roles) ~= "table" then return end
  local out = {{}}
  for _, role in ipairs(roles) do
    if type(role) == "string" and role ~= "" and not string.find(role, "[,%s%c]") then
      out[#out + 1] = role
    end
  end
  if #out > 0 then headers:add("{ROLES_HEADER}", table.concat(out, ",")) end
end
"""


def _claims_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": f"{_TYPE}.lua.v3.Lua",
            "default_source_code": {"inline_string": _LUA.lstrip()},
        },
    }


def http_filters(
    model: EdgeModel, auth: EdgeAuthOptions, open_prefixes: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The filters to put after the transcoder and before the router (none when disabled)."""
    if not auth.enabled:
        return []
    return [_strip_filter(), jwt_filter(model, auth, open_prefixes), _claims_filter()]


def _jwt_failed() -> dict[str, Any]:
    """`jwt_authn` refused the request: its status in metadata has a non-zero code (it is
    also written, with code 0, when a token verified; absent when no token was checked)."""
    return {
        "metadata_filter": {
            "matcher": {
                "filter": FILTER,
                "path": [{"key": FAILURE_KEY}, {"key": "code"}],
                # Not `invert` on `exact: 0`: access-log metadata filters ignore `invert`.
                "value": {"double_match": {"range": {"start": 1, "end": 1_000_000}}},
            },
            "match_if_key_not_found": False,
        }
    }


def local_reply_mappers(auth: EdgeAuthOptions) -> list[dict[str, Any]]:
    """Local replies of a failed verification: always 401 (`jwt_authn` answers 403 for a
    wrong audience; for this edge that token is as invalid as any other), and for REST
    callers a JSON `google.rpc.Status` body. A gRPC caller gets Envoy's own trailers-only
    answer: grpc-status 16 (UNAUTHENTICATED, mapped from 401) and the reason as message."""
    if not auth.enabled:
        return []
    refused = {"and_filter": {"filters": [_jwt_failed(), _jwt_reply()]}}
    return [
        {
            "filter": {"and_filter": {"filters": [_jwt_failed(), _jwt_reply(), rest_request()]}},
            "status_code": 401,
            "body_format_override": status_body("UNAUTHENTICATED"),
        },
        {"filter": refused, "status_code": 401},
    ]


def _jwt_reply() -> dict[str, Any]:
    """The local reply is the filter's own refusal (401, or 403 for a wrong audience).
    Needed beside `_jwt_failed`: on a public route a missing or absent token is recorded
    as a failure too while the request goes on, and a later local reply of another
    filter (a fault abort 429, "no healthy upstream" 503) must keep its own status."""

    def code(value: int) -> dict[str, Any]:
        return status_filter("EQ", value, f"mesh.jwt.reply_{value}")

    return {"or_filter": {"filters": [code(401), code(403)]}}


def jwks_cluster(auth: EdgeAuthOptions, eds_file: str, eds_dir: str) -> list[dict[str, Any]]:
    """The cluster Envoy fetches the JWKS from: the issuer's admin ports, by file-based EDS
    (plain HTTP/1.1; a refused connection or a 5xx is retried on another instance)."""
    if not _fetches_keys(auth):
        return []
    return [
        {
            "name": JWKS_CLUSTER,
            "type": "EDS",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "eds_cluster_config": {
                "eds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": eds_file,
                        "watched_directory": {"path": eds_dir},
                    },
                }
            },
            "outlier_detection": {
                "consecutive_5xx": 2,
                "consecutive_gateway_failure": 2,
                "interval": "2s",
                "base_ejection_time": "5s",
                "max_ejection_percent": 50,
            },
        }
    ]
