"""The end-user requirements declared in the contracts, and whose metadata a server believes.

`end_user_policy(service_names, trust_domain)` builds the server interceptor of
interceptors/end_user.py for a server serving `service_names`:

* requirement per method from `(meshproto.api.v1.auth)`: PUBLIC and undeclared
  (internal services, health, reflection) → none; USER → an end user; ROLES →
  an end user holding one of the roles;
* trusted identities (their `x-mesh-user-id` / `x-mesh-roles` are believed):
  the edge, `mesh-client` (a developer's `mesh.connect` process, which holds the
  CA key anyway) and every service identity the served contracts name as a
  caller, plus the server's own; any other identity's keys are ignored;
* the service identities among them act on their own authority: a USER/ROLES
  method called by `orders` does not need an end user (orders enforced its own
  caller's rights; its sagas, resumed after a restart, have none). The edge and
  `mesh-client` always need one where the method says so.

With MESH_TLS=off (debugging, benchmarks) there are no identities: every
caller is believed and acts on its own authority, as the caller policy is off
too (the start-up warning says so).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from google.protobuf import descriptor_pool

from interceptors.end_user import (
    NO_IDENTITY,
    EndUserServerInterceptor,
    OnDenied,
    Requirement,
)
from mesh.api import options
from mesh.security.pki import service_of

# A developer's own process (`mesh.connect` without MESH_SERVICE).
MESH_CLIENT = "mesh-client"
# Identities that stand for end users: they must bring one where a method needs it.
END_USER_GATEWAYS = frozenset({options.EDGE, MESH_CLIENT})


@functools.lru_cache(maxsize=4096)
def method_requirement(full_method: str) -> Requirement | None:
    """What `/pkg.Service/Method` needs of the end user (None: nothing)."""
    method = options.find_method(full_method)
    rule = None if method is None else options.auth_of(method)
    if rule is None or rule.access is options.Access.PUBLIC:
        return None
    if rule.access is options.Access.ROLES:
        return Requirement(roles=rule.roles)
    return Requirement()


def named_callers(service_names: Iterable[str]) -> frozenset[str]:
    """Every identity the contracts of `service_names` name as a caller ("*" left out)."""
    pool = descriptor_pool.Default()
    names: set[str] = set()
    for full in service_names:
        try:
            service = pool.FindServiceByName(full)
        except KeyError:
            continue
        for method in service.methods:
            names |= options.callers_of(method) or frozenset()
    names.discard(options.ANY_CALLER)
    return frozenset(names)


def end_user_policy(
    own_service: str,
    service_names: Iterable[str],
    trust_domain: str | None,
    on_denied: OnDenied | None = None,
) -> EndUserServerInterceptor:
    """The interceptor for a server of `own_service`; `trust_domain` None: plaintext."""
    if trust_domain is None:
        everyone = frozenset({NO_IDENTITY})
        return EndUserServerInterceptor(
            method_requirement,
            lambda _peer: None,
            trusted=everyone,
            on_own_authority=everyone,
            on_denied=on_denied,
        )
    services = (named_callers(service_names) | {own_service}) - END_USER_GATEWAYS
    return EndUserServerInterceptor(
        method_requirement,
        lambda peer: service_of(peer, trust_domain),
        trusted=services | END_USER_GATEWAYS,
        on_own_authority=services,
        on_denied=on_denied,
    )
