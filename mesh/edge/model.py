"""What the edge needs to know about the contracts, read from a descriptor set.

Services, major versions, HTTP bindings and visibility all come from the
descriptors (`google.api.http`, `meshproto.api.v1.internal`, `meshproto.api.v1.idempotent`),
so the Envoy config never restates them by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from mesh.api import options

# `<prefix>.<service>.v<N>`: the upstream cluster is <service>, the version vN.
_PACKAGE = re.compile(r"^(?P<prefix>[a-z0-9_.]+)\.(?P<service>[a-z0-9_]+)\.v(?P<major>\d+)$")
_VERSION_SEGMENT = re.compile(r"^/(?P<root>[^/]+)/v(?P<major>\d+)(?=/)")


@dataclass(frozen=True, slots=True)
class HttpBinding:
    verb: str  # get | post | put | patch | delete
    path: str  # e.g. /api/v2/orders/{order_id}
    body: str

    def unversioned(self) -> HttpBinding | None:
        """The same binding without its `/v<N>` segment (`/api/v2/orders` -> `/api/orders`)."""
        m = _VERSION_SEGMENT.match(self.path)
        if not m:
            return None
        return HttpBinding(self.verb, f"/{m['root']}{self.path[m.end() :]}", self.body)


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    client_streaming: bool
    server_streaming: bool
    idempotent: bool
    bindings: tuple[HttpBinding, ...]
    # `(meshproto.api.v1.rate_limit) = {strict: true}`: the stricter per-client limit.
    strict_rate_limit: bool = False
    # The end-user access it declares (`meshproto.api.v1.auth`); None: not declared,
    # which the edge treats as "a user is required" (fail closed).
    auth: options.AuthRule | None = None

    @property
    def streaming(self) -> bool:
        return self.client_streaming or self.server_streaming

    @property
    def hedged(self) -> bool:
        """Whether the edge may send a second copy of a call still in flight: only an
        idempotent read (every HTTP binding a GET). An idempotent write (an order with
        its idempotency key) is retried when it fails, never duplicated while it runs:
        under load a hedge would double the work exactly when the service is slowest."""
        return (
            self.idempotent
            and not self.streaming
            and bool(self.bindings)
            and all(b.verb == "get" for b in self.bindings)
        )


@dataclass(frozen=True, slots=True)
class Service:
    full_name: str  # shop.orders.v2.OrderService
    package: str  # shop.orders.v2
    cluster: str  # orders
    major: int  # 2
    internal: bool
    methods: tuple[Method, ...]

    @property
    def name(self) -> str:
        return self.full_name.rsplit(".", 1)[1]

    @property
    def unversioned_name(self) -> str:
        """shop.orders.OrderService: the gRPC name that `accept-version` resolves."""
        prefix = self.package.rsplit(".", 1)[0]
        return f"{prefix}.{self.name}"


@dataclass(frozen=True, slots=True)
class EdgeModel:
    services: tuple[Service, ...]

    @property
    def public(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if not s.internal)

    @property
    def clusters(self) -> list[str]:
        return sorted({s.cluster for s in self.public})

    @property
    def internal_clusters(self) -> list[str]:
        """Clusters whose services are all internal: never routed by the edge."""
        return sorted({s.cluster for s in self.services} - set(self.clusters))

    def versions_of(self, unversioned_name: str) -> list[Service]:
        """Public services sharing an unversioned name, oldest major first."""
        found = [s for s in self.public if s.unversioned_name == unversioned_name]
        return sorted(found, key=lambda s: s.major)


def _bindings(method: descriptor_pb2.MethodDescriptorProto) -> tuple[HttpBinding, ...]:
    if not method.options.HasExtension(annotations_pb2.http):
        return ()
    rule = method.options.Extensions[annotations_pb2.http]
    rules: list[http_pb2.HttpRule] = [rule, *rule.additional_bindings]
    out = []
    for r in rules:
        verb = r.WhichOneof("pattern")
        if verb and verb != "custom":
            out.append(HttpBinding(verb, getattr(r, verb), r.body))
    return tuple(out)


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(path.read_bytes())
    return fds


def build_model(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> EdgeModel:
    """Every versioned service in the descriptor set, with its methods and bindings."""
    services = []
    for f in files:
        m = _PACKAGE.fullmatch(f.package)
        if not m:
            continue  # google.*, unversioned packages: not served at the edge
        for svc in f.service:
            methods = tuple(
                Method(
                    name=meth.name,
                    client_streaming=meth.client_streaming,
                    server_streaming=meth.server_streaming,
                    idempotent=options.is_idempotent(meth),
                    bindings=_bindings(meth),
                    strict_rate_limit=options.has_strict_rate_limit(meth),
                    auth=options.auth_of(meth),
                )
                for meth in svc.method
            )
            services.append(
                Service(
                    full_name=f"{f.package}.{svc.name}",
                    package=f.package,
                    cluster=m["service"],
                    major=int(m["major"]),
                    internal=options.is_internal(svc),
                    methods=methods,
                )
            )
    return EdgeModel(tuple(sorted(services, key=lambda s: s.full_name)))
