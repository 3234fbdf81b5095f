"""Read the `meshproto.api.v1` options from descriptors: the one place that knows how.

The options are declared once, next to each RPC (protos/meshproto/api/v1/options.proto):

    service PaymentService {
      option (meshproto.api.v1.internal) = true;
      option (meshproto.api.v1.default_callers) = {services: ["orders"]};
      rpc Charge(ChargeRequest) returns (Payment) { option (meshproto.api.v1.idempotent) = true; }
    }

Every reader takes either a runtime descriptor (`ServiceDescriptor`,
`MethodDescriptor`: from the default pool or a pool built from a descriptor set)
or a descriptor proto (`ServiceDescriptorProto`, `MethodDescriptorProto`: from a
`FileDescriptorSet`, as the lint and the edge renderer read them).

Options are always parsed again from their bytes before reading. A pool that
did not know the extension when it parsed the options (a descriptor set read
before `options_pb2` was imported, or a separate pool whose option classes are
not the default pool's) keeps them as unknown fields, where a plain read would
silently answer "not set". Re-parsing costs a few microseconds, so callers on a
hot path cache per method (`IdempotentMethods` does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from meshproto.api.v1 import options_pb2

from interceptors._call import split_method

ServiceLike = ServiceDescriptor | descriptor_pb2.ServiceDescriptorProto
MethodLike = MethodDescriptor | descriptor_pb2.MethodDescriptorProto
_Options = TypeVar("_Options", descriptor_pb2.ServiceOptions, descriptor_pb2.MethodOptions)

# The edge gateway's service identity: public methods allow it.
EDGE = "edge"
# In `callers`: any service identity of the mesh.
ANY_CALLER = "*"


class Access(enum.Enum):
    """End-user access a method requires (`meshproto.api.v1.Auth.Access`)."""

    PUBLIC = options_pb2.Auth.ACCESS_PUBLIC
    USER = options_pb2.Auth.ACCESS_USER
    ROLES = options_pb2.Auth.ACCESS_ROLES


@dataclass(frozen=True, slots=True)
class AuthRule:
    """A method's declared end-user auth; `roles` is non-empty only for ROLES."""

    access: Access
    roles: frozenset[str] = frozenset()


def _reparsed(options: _Options) -> _Options:
    fresh = type(options)()
    fresh.ParseFromString(options.SerializeToString())
    return fresh


def service_options(service: ServiceLike) -> descriptor_pb2.ServiceOptions:
    if isinstance(service, descriptor_pb2.ServiceDescriptorProto):
        return _reparsed(service.options)
    return descriptor_pb2.ServiceOptions.FromString(service.GetOptions().SerializeToString())


def method_options(method: MethodLike) -> descriptor_pb2.MethodOptions:
    if isinstance(method, descriptor_pb2.MethodDescriptorProto):
        return _reparsed(method.options)
    return descriptor_pb2.MethodOptions.FromString(method.GetOptions().SerializeToString())


def is_internal(service: ServiceLike) -> bool:
    """`option (meshproto.api.v1.internal) = true`: served in the mesh only, never by the edge."""
    return bool(service_options(service).Extensions[options_pb2.internal])


def is_idempotent(method: MethodLike) -> bool:
    """`option (meshproto.api.v1.idempotent) = true`: safe to retry after the request was sent."""
    return bool(method_options(method).Extensions[options_pb2.idempotent])


def has_strict_rate_limit(method: MethodLike) -> bool:
    """`option (meshproto.api.v1.rate_limit) = {strict: true}`: the edge's stricter
    per-client limit applies (sign-up, login: what an abuser repeats)."""
    return bool(method_options(method).Extensions[options_pb2.rate_limit].strict)


def default_callers(service: ServiceLike) -> frozenset[str] | None:
    """The service's `default_callers`, or None when it declares none."""
    options = service_options(service)
    if not options.HasExtension(options_pb2.default_callers):
        return None
    return frozenset(options.Extensions[options_pb2.default_callers].services)


def callers_of(method: MethodLike, service: ServiceLike | None = None) -> frozenset[str] | None:
    """Service identities allowed to call `method`: its own `callers`, else its service's
    `default_callers`; None when neither is declared (the lint refuses that on internal
    services). A runtime descriptor knows its service; pass `service` with a proto."""
    options = method_options(method)
    if options.HasExtension(options_pb2.callers):
        return frozenset(options.Extensions[options_pb2.callers].services)
    if service is None and isinstance(method, MethodDescriptor):
        service = method.containing_service
    return None if service is None else default_callers(service)


def auth_of(method: MethodLike) -> AuthRule | None:
    """The method's declared end-user auth, or None (not declared, or ACCESS_UNSPECIFIED)."""
    options = method_options(method)
    if not options.HasExtension(options_pb2.auth):
        return None
    auth = options.Extensions[options_pb2.auth]
    if auth.access == options_pb2.Auth.ACCESS_UNSPECIFIED:
        return None
    return AuthRule(Access(auth.access), frozenset(auth.roles))


def find_method(
    full_method: str, pool: descriptor_pool.DescriptorPool | None = None
) -> MethodDescriptor | None:
    """The descriptor of `/pkg.Service/Method` in `pool` (default pool), or None if unknown."""
    service, name = split_method(full_method)
    try:
        found = (pool or descriptor_pool.Default()).FindServiceByName(service)
    except KeyError:
        return None
    method: MethodDescriptor | None = found.methods_by_name.get(name)
    return method


class IdempotentMethods:
    """`self("/pkg.Service/Method")` is True when the method is marked idempotent.

    The retry interceptor takes it as its `is_idempotent` predicate (interceptors
    know nothing of the mesh's options). Unknown services and methods are not
    idempotent: retrying them is never assumed safe. Answers are cached per path.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()
        self._cache: dict[str, bool] = {}

    def __call__(self, full_method: str) -> bool:
        known = self._cache.get(full_method)
        if known is None:
            method = find_method(full_method, self._pool)
            known = self._cache[full_method] = method is not None and is_idempotent(method)
        return known
