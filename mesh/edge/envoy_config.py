"""Render the Envoy edge config from the contracts.

Routes, the transcoder's service list, clusters, retries and timeouts all come
from `EdgeModel` (the descriptor set); the only inputs besides are addresses,
file locations and limits (`EdgeOptions`). Internal services get no route at
all, so the edge cannot reach them by gRPC or REST.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from mesh.edge import browsers, jwt_authn
from mesh.edge.admin import SOCKET_MODE
from mesh.edge.browsers import NO_CORS, EdgeCors
from mesh.edge.hardening import harden
from mesh.edge.jwt_authn import EdgeAuthOptions
from mesh.edge.limits import EdgeLimits
from mesh.edge.local_replies import local_reply_config
from mesh.edge.model import EdgeModel, HttpBinding, Service
from mesh.edge.subsets import (
    RUNTIME_FILE,
    cluster_subset_options,
    fault_filters,
    runtime_layer,
    track_header_filter,
)
from mesh.security.store import PUBLISHED_DIR

ACCEPT_VERSION = "accept-version"
META_CLUSTER = "edge_meta"
_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
_TRANSCODER_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
_HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
# Routes that the edge meta server answers: reflection over the public
# contracts only, and health aggregated from the registry.
_META_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.health.v1.Health/",
)


@dataclass(frozen=True, slots=True)
class EdgeOptions:
    """Where things are: addresses, ports, files, and the listener's limits."""

    descriptor_path: str = "/etc/envoy/descriptors.binpb"
    edge_descriptor_path: str = "/etc/envoy/edge_descriptors.binpb"
    eds_dir: str = "/var/run/envoy/eds"
    listen_address: str = "0.0.0.0"
    listen_port: int = 8080
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    # Set: the admin listens on this Unix socket (0600) instead of admin_address:port
    # (mesh/edge/admin.py says why a local edge does).
    admin_socket: str = ""
    # Set: a listener on listen_address:health_port answering only GET /ready (Envoy's
    # health_check filter: 200 while serving, 503 once draining or failed), so that a
    # kubelet probes it and the admin can stay on 127.0.0.1 (`_health_listener`).
    health_port: int = 0
    meta_address: str = "127.0.0.1"
    meta_port: int = 9190
    unary_timeout_s: float = 30.0
    rate_limit_per_s: int = 2000
    idempotent_retries: int = 2
    access_log_path: str = "/dev/stdout"
    # An OTLP/gRPC trace collector (the local sink of `meshctl up`); port 0: no tracing.
    otlp_address: str = "127.0.0.1"
    otlp_port: int = 0
    # Share of requests the edge starts a sampled trace for (Envoy's random_sampling).
    trace_sample_percent: float = 100.0
    # How often the edge sends its buffered spans to the collector (`tracer_runtime`).
    trace_flush_ms: int = 5000
    # An idempotent read (every HTTP binding a GET) not answered within this is hedged to
    # another host (the first answer wins): a frozen instance costs a read this long, not
    # the route timeout. Idempotent writes are retried on failure only, never hedged.
    idempotent_try_timeout_s: float = 0.5
    # mTLS to the upstreams as the edge's own identity (`edge`), each upstream's
    # identity checked per cluster (URI SAN spiffe://<trust-domain>/svc/<cluster>),
    # and the TLS listener (certificate from the mesh CA, or yours at these paths).
    tls: bool = True
    trust_domain: str = "mesh.local"
    ca_cert_path: str = "/etc/shop-mesh/pki/ca.crt"
    cert_path: str = "/etc/shop-mesh/pki/edge.crt"
    key_path: str = "/etc/shop-mesh/pki/edge.key"
    # The certificate's directory is a PkiStore's: watch its `published/` (_cert_watch_dir).
    cert_published: bool = False
    tls_listen_port: int = 8443
    # The file-based SDS document naming the edge's certificate files (render_files
    # writes it): Envoy watches the PKI directory and reloads a renewed certificate.
    sds_path: str = "/etc/envoy/edge_sds.yaml"
    # What the edge accepts from a client (sizes, timeouts, rates): mesh/edge/hardening.py.
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    # End-user JWT verification (mesh/edge/jwt_authn.py): issuer, audiences, JWKS source.
    auth: EdgeAuthOptions = EdgeAuthOptions()  # noqa: RUF009 (frozen: shared safely)
    # The page origins browsers may call the edge from (mesh/edge/browsers.py); none: no CORS.
    cors: EdgeCors = NO_CORS


def _type(extension: str) -> str:
    return f"type.googleapis.com/envoy.extensions.{extension}"


def eds_path(options: EdgeOptions, cluster: str) -> str:
    return f"{options.eds_dir}/{cluster}.json"


def runtime_path(options: EdgeOptions) -> str:
    """The RTDS file (traffic-policy faults) beside the EDS files (mesh/edge/subsets.py)."""
    return f"{options.eds_dir}/{RUNTIME_FILE}"


def edge_descriptor_set(
    fds: descriptor_pb2.FileDescriptorSet, model: EdgeModel
) -> descriptor_pb2.FileDescriptorSet:
    """A copy of the descriptor set whose public bindings also answer unversioned.

    `/api/v2/orders` gains `/api/orders`. v1 and v2 then share bindings, which
    one transcoder config cannot tell apart, so these bindings are only used
    by per-route transcoder configs that list one version's services.
    """
    public = {s.full_name for s in model.public}
    out = copy.deepcopy(fds)
    for f in out.file:
        for svc in f.service:
            if f"{f.package}.{svc.name}" not in public:
                continue
            for meth in svc.method:
                if not meth.options.HasExtension(annotations_pb2.http):
                    continue
                rule = meth.options.Extensions[annotations_pb2.http]
                for r in [rule, *rule.additional_bindings]:
                    verb = r.WhichOneof("pattern")
                    if not verb or verb == "custom":
                        continue
                    path = getattr(r, verb)
                    unv = HttpBinding(verb, path, r.body).unversioned()
                    if unv is None:
                        continue
                    extra = rule.additional_bindings.add()
                    setattr(extra, verb, unv.path)
                    extra.body = r.body
                    break  # one unversioned twin per method is enough
    return out


def _transcoder(descriptor: str, services: list[str]) -> dict[str, Any]:
    return {
        "@type": _TRANSCODER_TYPE,
        "proto_descriptor": descriptor,
        "services": services,
        "convert_grpc_status": True,
        "print_options": {
            "add_whitespace": False,
            "always_print_primitive_fields": True,
            "always_print_enums_as_ints": False,
            "preserve_proto_field_names": False,
        },
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
        },
    }


def _grpc_route(
    path: str,
    service: Service,
    method_streaming: bool,
    idempotent: bool,
    options: EdgeOptions,
    *,
    hedged: bool = False,
    header: str | None = None,
    rewrite: str | None = None,
) -> dict[str, Any]:
    match: dict[str, Any] = {"path": path, "grpc": {}}
    if header is not None:
        match["headers"] = [{"name": ACCEPT_VERSION, "string_match": {"exact": header}}]
    action: dict[str, Any] = {
        "cluster": service.cluster,
        # Streams live as long as the caller wants: no route timeout.
        "timeout": "0s" if method_streaming else f"{options.unary_timeout_s:g}s",
    }
    if method_streaming:
        action["idle_timeout"] = "0s"
    if not method_streaming:
        action["retry_policy"] = _retry_policy(idempotent, options, hedged=hedged)
        if hedged:
            action["hedge_policy"] = {"hedge_on_per_try_timeout": True}
    if rewrite is not None:
        action["prefix_rewrite"] = rewrite
    return {"match": match, "route": action}


def _retry_policy(
    idempotent: bool, options: EdgeOptions, *, hedged: bool = False
) -> dict[str, Any]:
    """Retries on another host: any call whose request never reached an upstream
    (refused connection or stream), and idempotent calls also on UNAVAILABLE or a reset
    (the upstream may have seen the request; repeating it is harmless). Idempotent
    reads (`hedged`) also get no answer within `idempotent_try_timeout_s` retried, as a
    hedge — the first try stays in flight and the first answer wins — so a slow but
    live host loses nothing, and a frozen one (SIGSTOP, a GC pause) costs the try
    timeout, not the route timeout. Writes are never hedged: a saga-starting call that
    is slow because the shop is saturated would otherwise be sent two or three times
    (measured by the orders benchmark), multiplying the load exactly then."""
    retry_on = ["connect-failure", "refused-stream"]
    extra: dict[str, Any] = {}
    if idempotent:
        retry_on += ["unavailable", "reset", "gateway-error"]
    if hedged:
        extra["per_try_timeout"] = f"{options.idempotent_try_timeout_s:g}s"
    return {
        **extra,
        "retry_on": ",".join(retry_on),
        "num_retries": options.idempotent_retries,
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _type("retry.host.previous_hosts.v3.PreviousHostsPredicate")
                },
            }
        ],
        # With least-request balancing, a just-killed instance (no requests in flight,
        # not yet ejected) wins most picks, and `previous_hosts` rejects it only as often
        # as it may re-pick: with 2 instances ~3/4 of picks land on it, so 3 re-picks
        # left a retry on the dead host about a third of the time (a read failed in the
        # chaos test's kill, 1 in 621); 10 left it ~6 % (1 read in 309 still failed, all
        # three tries on the dead host, 2026-12-03); 50 leave it ~6e-7. Re-picking costs
        # nanoseconds, and only on a retry.
        "host_selection_retry_max_attempts": 50,
    }


def _grpc_routes(model: EdgeModel, options: EdgeOptions) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    for svc in model.public:
        for m in svc.methods:
            routes.append(
                _grpc_route(
                    f"/{svc.full_name}/{m.name}",
                    svc,
                    m.streaming,
                    m.idempotent,
                    options,
                    hedged=m.hedged,
                )
            )
    # Unversioned gRPC names: `accept-version` pins a major, the latest by default.
    for unversioned in sorted({s.unversioned_name for s in model.public}):
        versions = model.versions_of(unversioned)
        pinned: list[tuple[Service, str | None]] = [(s, f"v{s.major}") for s in versions]
        for svc, header in [*pinned, (versions[-1], None)]:
            for m in svc.methods:
                routes.append(
                    _grpc_route(
                        f"/{unversioned}/{m.name}",
                        svc,
                        m.streaming,
                        m.idempotent,
                        options,
                        header=header,
                        rewrite=f"/{svc.full_name}/{m.name}",
                        hedged=m.hedged,
                    )
                )
    return routes


def _rest_prefixes(service: Service) -> list[str]:
    """Static prefixes (`/api/orders`) of a service's unversioned bindings."""
    prefixes = set()
    for m in service.methods:
        for b in m.bindings:
            unv = b.unversioned()
            if unv is not None:
                parts = unv.path.split("/")
                prefixes.add("/".join(parts[:3]))
    return sorted(prefixes)


def _rest_routes(model: EdgeModel, options: EdgeOptions) -> list[dict[str, Any]]:
    """Routes for unversioned REST paths, each with a one-version transcoder."""
    routes: list[dict[str, Any]] = []
    for unversioned in sorted({s.unversioned_name for s in model.public}):
        versions = model.versions_of(unversioned)
        for prefix in sorted({p for s in versions for p in _rest_prefixes(s)}):
            serving = [s for s in versions if prefix in _rest_prefixes(s)]
            for svc, pinned in [(s, True) for s in serving] + [(serving[-1], False)]:
                match: dict[str, Any] = {"path_separated_prefix": prefix}
                if pinned:
                    match["headers"] = [
                        {"name": ACCEPT_VERSION, "string_match": {"exact": f"v{svc.major}"}}
                    ]
                routes.append(
                    {
                        "match": match,
                        "route": {
                            "cluster": svc.cluster,
                            "timeout": f"{options.unary_timeout_s:g}s",
                            # One prefix covers methods of both kinds: only the
                            # retries that are safe for any method.
                            "retry_policy": _retry_policy(False, options),
                        },
                        "typed_per_filter_config": {
                            _TRANSCODER: _transcoder(options.edge_descriptor_path, [svc.full_name])
                        },
                    }
                )
            # An accept-version that names no served major is the caller's mistake.
            routes.insert(
                len(routes) - 1,
                {
                    "match": {
                        "path_separated_prefix": prefix,
                        "headers": [{"name": ACCEPT_VERSION, "present_match": True}],
                    },
                    # The transcoder would answer 404 before the router got here.
                    "typed_per_filter_config": {
                        _TRANSCODER: {
                            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                            "disabled": True,
                        }
                    },
                    # Text: the local-reply mappers make it a JSON Status body
                    # (local_replies.py), as every other answer of the edge's own.
                    "direct_response": {
                        "status": 400,
                        "body": {
                            "inline_string": "accept-version must be one of "
                            + ", ".join(f"v{s.major}" for s in serving)
                        },
                    },
                },
            )
    return routes


EDGE_SECRET = "edge_certificate"


def _certificate(options: EdgeOptions) -> dict[str, Any]:
    """The edge's certificate by SDS from a file: renewed files are picked up live."""
    return {
        "tls_certificate_sds_secret_configs": [
            {
                "name": EDGE_SECRET,
                "sds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {"path": options.sds_path},
                },
            }
        ]
    }


def _cert_watch_dir(options: EdgeOptions) -> str:
    """Where Envoy watches for a replaced certificate: with `cert_published` the PKI
    directory's `published/` (one move once key and certificate are both written:
    mesh/security/store.py), else the certificate's own directory (a Kubernetes secret
    mount, whose files change together by one symlink swap)."""
    directory = Path(options.cert_path).parent
    return str(directory / PUBLISHED_DIR if options.cert_published else directory)


def sds_document(options: EdgeOptions) -> dict[str, Any]:
    """The SDS file: the certificate and key files, and the directory Envoy watches for
    their replacement (written atomically by mesh/security/store.py, key first)."""
    return {
        "resources": [
            {
                "@type": _type("transport_sockets.tls.v3.Secret"),
                "name": EDGE_SECRET,
                "tls_certificate": {
                    "certificate_chain": {"filename": options.cert_path},
                    "private_key": {"filename": options.key_path},
                    "watched_directory": {"path": _cert_watch_dir(options)},
                },
            }
        ]
    }


def _per_filter(configs: dict[str, Any]) -> dict[str, Any]:
    return {"typed_per_filter_config": configs} if configs else {}


def _upstream_tls(service: str, options: EdgeOptions) -> dict[str, Any]:
    """The edge's client side of mTLS to `service`: its identity, and the callee's checked.

    Health checks use the same socket, so they present the edge's certificate too.
    """
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _type("transport_sockets.tls.v3.UpstreamTlsContext"),
            "sni": f"{service}.{options.trust_domain}",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                **_certificate(options),
                "validation_context": {
                    "trusted_ca": {"filename": options.ca_cert_path},
                    "match_typed_subject_alt_names": [
                        {
                            "san_type": "URI",
                            "matcher": {"exact": f"spiffe://{options.trust_domain}/svc/{service}"},
                        }
                    ],
                },
            },
        },
    }


def _downstream_tls(options: EdgeOptions) -> dict[str, Any]:
    """The TLS listener's server side: the edge certificate; clients are not asked for one."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _type("transport_sockets.tls.v3.DownstreamTlsContext"),
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                **_certificate(options),
            },
        },
    }


def _cluster(name: str, options: EdgeOptions) -> dict[str, Any]:
    tls = {"transport_socket": _upstream_tls(name, options)} if options.tls else {}
    return {
        "name": name,
        **tls,
        "type": "EDS",
        "connect_timeout": "1s",
        "lb_policy": "LEAST_REQUEST",
        # A host the registry dropped (deregistered on drain, a retired release subset)
        # leaves at once: by default Envoy keeps a removed host while it still passes
        # active health checks, and sent it requests after its server had stopped.
        "ignore_health_on_host_removal": True,
        **cluster_subset_options(),  # traffic-policy subsets and weights
        "typed_extension_protocol_options": _HTTP2_OPTIONS,
        "eds_cluster_config": {
            "eds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": eds_path(options, name),
                    "watched_directory": {"path": options.eds_dir},
                },
            }
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "no_traffic_interval": "2s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": ""},
            }
        ],
        # No merge window: a host that passed its first health check (or a new
        # instance) takes traffic at once instead of up to 1 s later.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}, "update_merge_window": "0s"},
        # Retries (hedges included) in flight: as many as the cluster's own request limit
        # (Envoy's default `max_requests`, 1,024), instead of Envoy's default of 3, which a
        # frozen host overflows at once (the overflowing calls then wait the route timeout
        # on it). When an instance dies, every call it held needs its retry at once, and a
        # refused retry is a failed call the other instance would have answered. Budgets
        # that scale with the calls in flight refused them: 25 % (floor 16) refused 60-112
        # in the chaos test's kill (2026-12-03), 50 % 22-34; 50 % with a floor of 128
        # refused whatever a dead instance held beyond 128 (two stand-in processes, 300 slow
        # reads in flight, one SIGKILLed: 32-79 reads failed in 5 runs of 6, 2026-12-06; the
        # chaos test's kill lost 2 reads of 6,239 once). No percentage covers it: a budget
        # counts the calls in flight, and the dead instance's calls are no longer in flight
        # when they ask for their retries (100 % still refused 7 of ~150). With 1,024: 0
        # refused (tests/integration/edge/test_edge_failover.py). What bounds retries is per
        # call: at most 2, with back-off, on another host; then outlier ejection and the
        # listener's rate limit.
        "circuit_breakers": {"thresholds": [{"max_retries": 1024}]},
        # Ejects a host that cannot be reached (connect failures, resets, timeouts: errors
        # of local origin), never one for the answers it gives: a service's own
        # UNAVAILABLE usually means one of *its* dependencies is down, and Envoy counts a
        # trailers-only gRPC UNAVAILABLE as a 503, so 5xx ejection took a live instance out
        # (tests/integration/edge/test_edge_routing.py), which leaves the edge no healthy
        # host while the other instance is being restarted: the likely cause of reads
        # failing in the chaos test's kill (6 of 114, once). Retries on another host
        # (`previous_hosts`) already route each call around an instance that answers
        # UNAVAILABLE; active health checks take a sick one out.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 3,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "enforcing_local_origin_success_rate": 0,
            "interval": "2s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
    }


OTLP_CLUSTER = "otel_collector"
# Spans Envoy's tracer buffers before it sends them at once (the OpenTelemetry SDK's
# default export batch, OTEL_BSP_MAX_EXPORT_BATCH_SIZE).
OTLP_BATCH_SPANS = 512


def tracer_runtime(flush_ms: int) -> dict[str, int]:
    """Runtime values for Envoy's OpenTelemetry tracer: send the buffered spans every
    `flush_ms` or once `OTLP_BATCH_SPANS` wait, as the services' batch span processors do.

    Why: Envoy's defaults (`min_flush_spans` 5, `flush_interval_ms` 5000) send an export
    call every 5 spans, i.e. every 2.5 requests with its server and upstream spans: at
    ~600 reads/s through the edge of `meshctl up`, ~240 calls a second to the collector,
    which cost the local trace sink ~0.5 ms of CPU per request, about as much as Envoy
    itself (measured with `python -m bench orders`' read hop). Limit: spans reach the
    collector up to `flush_ms` later, and a crash of Envoy loses at most that many
    seconds' spans (the SDK's batch processor has the same trade)."""
    return {
        "tracing.opentelemetry.flush_interval_ms": flush_ms,
        "tracing.opentelemetry.min_flush_spans": OTLP_BATCH_SPANS,
    }


def _tracing(options: EdgeOptions) -> dict[str, Any]:
    """Envoy's OpenTelemetry tracer: a SERVER span per request (the trace's root when
    the caller sent no `traceparent`) and a CLIENT span per upstream attempt, so
    retries show; W3C `traceparent` goes upstream, where the services continue the
    trace (their parent-based samplers follow the edge's decision). Every request is
    sampled unless `trace_sample_percent` says less."""
    return {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": "edge",
            },
        },
        "spawn_upstream_span": True,
        "random_sampling": {"value": options.trace_sample_percent},
    }


def _admin_address(options: EdgeOptions) -> dict[str, Any]:
    if options.admin_socket:
        return {"pipe": {"path": options.admin_socket, "mode": SOCKET_MODE}}
    return {"socket_address": {"address": options.admin_address, "port_value": options.admin_port}}


def _otlp_cluster(options: EdgeOptions) -> dict[str, Any]:
    return {
        "name": OTLP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _HTTP2_OPTIONS,
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": options.otlp_address,
                                        "port_value": options.otlp_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


# The access log's gRPC status. Envoy's %GRPC_STATUS% reads the downstream response,
# where the transcoder has turned a REST call's grpc-status into the JSON body, and falls
# back to gRPC's HTTP mapping: a declined card (FAILED_PRECONDITION, HTTP 400) was logged
# as 13 INTERNAL, a missing product (NOT_FOUND, HTTP 404) as 12 UNIMPLEMENTED. So the
# router copies an upstream's grpc-status response header (a gRPC error is
# trailers-only) into x-grpc-status before the transcoder sees it, and the log prefers
# it; an OK answer (grpc-status in trailers) and a local reply (JWT, rate limit) keep
# Envoy's own reading.
_UPSTREAM_GRPC_STATUS = "x-grpc-status"
_UPSTREAM_GRPC_STATUS_HEADER = {
    "header": {"key": _UPSTREAM_GRPC_STATUS, "value": "%RESP(grpc-status)%"},
    "keep_empty_value": False,
    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
}
# The answer's content type: the grpc_web filter has rewritten the request's by then.
_GRPC_WEB_ANSWER = (
    "('content-type' in response.headers"
    " && response.headers['content-type'].startsWith('application/grpc-web'))"
)
# No value: a lookup CEL cannot answer, which the log writes as null like the other
# fields' absent values (CEL's own `null` is written as the string "NULL").
_NO_VALUE = "response.headers['x-no-value']"
# The status the client saw: the upstream's (copied to a header while the trailers were
# still there), else Envoy's for its own answer; none for a preflight the CORS filter
# answered, nor for a gRPC-Web call past its headers (its trailers went into the body
# before the log is written, and Envoy's fallback would say UNKNOWN for a success).
_GRPC_STATUS_LOG_FIELD = (
    f"%CEL('{_UPSTREAM_GRPC_STATUS}' in response.headers"
    f" ? response.headers['{_UPSTREAM_GRPC_STATUS}']"
    f" : response.code_details == 'cors_response' ? {_NO_VALUE}"
    f" : 'grpc-status' in response.headers || !{_GRPC_WEB_ANSWER} ? response.grpc_status"
    f" : {_NO_VALUE})%"
)


def render(model: EdgeModel, options: EdgeOptions) -> dict[str, Any]:
    """The complete Envoy bootstrap as a dict (dump it as YAML or JSON)."""
    access_log_format = {
        "time": "%START_TIME%",
        # The client's method and path: the transcoder rewrites both for the upstream.
        "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "grpc_status": _GRPC_STATUS_LOG_FIELD,
        "duration_ms": "%DURATION%",
        # The last upstream tried, how many tries the request took (retries and hedges
        # included) and, for a request that failed at the edge, why: Envoy's response
        # flags (UF upstream connection failure, URX retry limit reached, UO overflow...)
        # and the transport's own reason (a TLS or connect error), so a failed call can
        # be told apart from the upstream's own error without Envoy's debug log.
        "upstream": "%UPSTREAM_HOST%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "flags": "%RESPONSE_FLAGS%",
        "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }
    meta_routes = [
        {"match": {"prefix": p}, "route": {"cluster": META_CLUSTER, "timeout": "0s"}}
        for p in _META_PREFIXES
    ]
    hcm = {
        "@type": _type("filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": "edge",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _type("access_loggers.file.v3.FileAccessLog"),
                    "path": options.access_log_path,
                    "log_format": {"json_format": access_log_format},
                },
            }
        ],
        "route_config": {
            "name": "edge",
            "virtual_hosts": [
                {
                    "name": "edge",
                    "domains": ["*"],
                    "response_headers_to_add": [_UPSTREAM_GRPC_STATUS_HEADER],
                    "routes": meta_routes
                    + _rest_routes(model, options)
                    + _grpc_routes(model, options)
                    + browsers.anchor_routes(options.cors, options.limits.max_request_body_bytes),
                    **_per_filter(
                        browsers.virtual_host_policy(
                            options.cors,
                            (b.verb for s in model.public for m in s.methods for b in m.bindings),
                        )
                    ),
                }
            ],
        },
        "http_filters": [
            track_header_filter(),  # x-mesh-track selects a subset
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": _type("filters.http.local_ratelimit.v3.LocalRateLimit"),
                    "stat_prefix": "edge_rate_limit",
                    "token_bucket": {
                        "max_tokens": options.rate_limit_per_s,
                        "tokens_per_fill": options.rate_limit_per_s,
                        "fill_interval": "1s",
                    },
                    "filter_enabled": {
                        "default_value": {"numerator": 100, "denominator": "HUNDRED"}
                    },
                    "filter_enforced": {
                        "default_value": {"numerator": 100, "denominator": "HUNDRED"}
                    },
                    "rate_limited_as_resource_exhausted": True,
                },
            },
            # CORS and gRPC-Web: after the abuse limit, before every other refusal.
            *browsers.http_filters(options.cors),
            {
                "name": _TRANSCODER,
                "typed_config": _transcoder(
                    options.descriptor_path, [s.full_name for s in model.public]
                ),
            },
            # End users first: an unauthenticated call is refused, not faulted.
            *jwt_authn.http_filters(model, options.auth, _META_PREFIXES),
            # Traffic-policy faults, by runtime; after the transcoder, where every call
            # (gRPC or transcoded REST) is routed to its cluster (mesh/edge/subsets.py).
            *fault_filters(model.clusters),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    meta_cluster = {
        "name": META_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _HTTP2_OPTIONS,
        "load_assignment": {
            "cluster_name": META_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": options.meta_address,
                                        "port_value": options.meta_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }

    def listener(name: str, port: int, tls: bool) -> dict[str, Any]:
        chain: dict[str, Any] = {
            "filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
            ]
        }
        if tls:
            chain["transport_socket"] = _downstream_tls(options)
        return {
            "name": name,
            "address": {"socket_address": {"address": options.listen_address, "port_value": port}},
            "filter_chains": [chain],
        }

    listeners = [listener("edge", options.listen_port, False)]
    if options.tls:
        listeners.append(listener("edge_tls", options.tls_listen_port, True))
    clusters = [meta_cluster, *(_cluster(c, options) for c in model.clusters)]
    clusters += browsers.anchor_clusters(options.cors)
    clusters += jwt_authn.jwks_cluster(
        options.auth, eds_path(options, jwt_authn.JWKS_CLUSTER), options.eds_dir
    )
    hcm["local_reply_config"] = local_reply_config(jwt_authn.local_reply_mappers(options.auth))
    if options.otlp_port:
        hcm["tracing"] = _tracing(options)
        clusters.append(_otlp_cluster(options))
    bootstrap = {
        "node": {"id": "shop-mesh-edge", "cluster": "edge"},
        "layered_runtime": runtime_layer(
            runtime_path(options),
            tracer_runtime(options.trace_flush_ms) if options.otlp_port else None,
        ),
        "admin": {"address": _admin_address(options)},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
        },
    }
    out = harden(bootstrap, model, options.limits)
    if options.health_port:
        out["static_resources"]["listeners"].append(_health_listener(options))
    return out


HEALTH_LISTENER = "health"
HEALTH_PATH = "/ready"


def _health_listener(options: EdgeOptions) -> dict[str, Any]:
    """Readiness for probes without the admin (Envoy Gateway's pattern): the health_check
    filter answers GET /ready itself (200 serving, 503 draining or after the admin's
    /healthcheck/fail); every other request finds no route (404). Nothing here acts on
    the edge, so it may listen where the kubelet reaches it. Added after `harden`: the
    edge's routes, auth and limits are not its business; its own buffer limit is set."""
    hcm = {
        "stat_prefix": "health",
        "route_config": {
            "name": "health",
            "virtual_hosts": [{"name": "health", "domains": ["*"], "routes": []}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": _type("filters.http.health_check.v3.HealthCheck"),
                    "pass_through_mode": False,
                    "headers": [{"name": ":path", "string_match": {"exact": HEALTH_PATH}}],
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _type("filters.http.router.v3.Router")},
            },
        ],
    }
    return {
        "name": HEALTH_LISTENER,
        "address": {
            "socket_address": {
                "address": options.listen_address,
                "port_value": options.health_port,
            }
        },
        "per_connection_buffer_limit_bytes": 32 * 1024,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _type(
                                "filters.network.http_connection_manager.v3.HttpConnectionManager"
                            ),
                            **hcm,
                        },
                    }
                ]
            }
        ],
    }


def eds_document(cluster: str, endpoints: list[tuple[str, int]]) -> dict[str, Any]:
    """A file-based EDS document for one cluster (written atomically by the syncer)."""
    return {
        "version_info": str(abs(hash(tuple(endpoints)))),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": host, "port_value": port}
                                    }
                                }
                            }
                            for host, port in endpoints
                        ]
                    }
                ],
            }
        ],
    }


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by a rename: Envoy reloads file-based xDS only on moves."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
