"""The end user a call acts for: who it is, where it is believed from, what methods need.

The edge verifies the end user's token and passes its claims as metadata:
`x-mesh-user-id` (the token's `sub`) and `x-mesh-roles` (comma-joined roles).
Server side, `EndUserServerInterceptor` turns them into the `current_end_user`
contextvar for the handler's task, and enforces each method's declared
requirement before the handler runs:

* the metadata is read only when the peer's identity (its certificate, as the
  caller policy reads it) is in `trusted`; from any other caller the keys are
  ignored, as if absent (anyone can send metadata; only the mesh's own
  identities are believed to have verified it);
* `requirement(method)` says what the method needs: None (public, or internal
  with no end-user requirement), `Requirement(roles=frozenset())` (an end user),
  `Requirement(roles={...})` (an end user holding one of the roles). Missing end
  user → UNAUTHENTICATED; no matching role → PERMISSION_DENIED. Callers whose
  identity is in `on_own_authority` (the mesh's services) are exempt: a service
  calling another service's USER method has enforced its own end user's rights
  already (the callers policy says which services may call what), and its
  background work (a saga resumed after a restart) has no end user at all. For
  them `calling_service` is set, so handlers can tell "a service acting on its
  own authority" from "an anonymous caller" (on methods with a requirement, and
  on calls carrying an end user: a call of a public or internal method without
  one costs no TLS auth-context read at all).

Client side, `EndUserClientInterceptor` adds the two keys from
`current_end_user` to every outgoing call that does not carry them already, so
the end user travels with the calls a handler makes (contextvars are copied
into the client call's task, like the incoming deadline). `acting_as(user)`
sets it explicitly (a developer's own client).

Limits: roles are names, compared exactly; the user id is not validated beyond
being non-empty and at most `MAX_USER_ID_CHARS`. A caller with no TLS identity
(plaintext mesh) is named `NO_IDENTITY`; the mesh decides whether to trust it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from interceptors._call import with_metadata
from interceptors._client import ClientInterceptor, Continuation, returns_call
from interceptors._handler import StreamBehaviour, UnaryBehaviour, WrappingServerInterceptor
from interceptors.policy import peer_identity

log = logging.getLogger(__name__)

USER_ID_KEY = "x-mesh-user-id"
ROLES_KEY = "x-mesh-roles"
NO_IDENTITY = "-"
MAX_USER_ID_CHARS = 256
MAX_ROLES_CHARS = 1024


@dataclass(frozen=True, slots=True)
class EndUser:
    """An authenticated end user: the token's subject and roles."""

    user_id: str
    roles: frozenset[str] = frozenset()

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def metadata(self) -> list[tuple[str, str]]:
        """The metadata pairs that carry this end user on a call."""
        pairs = [(USER_ID_KEY, self.user_id)]
        if self.roles:
            pairs.append((ROLES_KEY, ",".join(sorted(self.roles))))
        return pairs


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a method needs of the end user: present, and (when `roles`) one of them."""

    roles: frozenset[str] = frozenset()


# The end user of the call being handled (or set by `acting_as`); None: no end user.
current_end_user: ContextVar[EndUser | None] = ContextVar("shop_mesh_end_user", default=None)
# The calling service when it acts on its own authority (see the module docstring).
calling_service: ContextVar[str | None] = ContextVar("shop_mesh_calling_service", default=None)

RequirementOf = Callable[[str], Requirement | None]
IdentityOf = Callable[[str], str | None]
OnDenied = Callable[[str, str, grpc.StatusCode], None]


@contextlib.contextmanager
def acting_as(user: EndUser | None) -> Iterator[EndUser | None]:
    """Calls made inside the block carry `user` (None: no end user)."""
    token = current_end_user.set(user)
    try:
        yield user
    finally:
        current_end_user.reset(token)


def parse_end_user(metadata: Any) -> EndUser | None:
    """The end user named by the call's metadata, or None (absent, empty or malformed).

    A key sent twice is malformed (which of them would the edge have verified?)."""
    user_id: str | None = None
    roles: str | None = None
    for key, value in metadata or ():
        if key == USER_ID_KEY:
            if user_id is not None:
                return None
            user_id = value if isinstance(value, str) else ""
        elif key == ROLES_KEY:
            if roles is not None:
                return None
            roles = value if isinstance(value, str) else ""
    if not user_id:
        return None
    return _end_user(user_id, roles)


@functools.lru_cache(maxsize=4096)
def _end_user(user_id: str, roles: str | None) -> EndUser | None:
    """Parsed once per (user, roles) seen recently: the per-call cost is a cache hit."""
    if len(user_id) > MAX_USER_ID_CHARS or not user_id.isprintable():
        return None
    if roles is None or len(roles) > MAX_ROLES_CHARS:
        return EndUser(user_id)
    return EndUser(user_id, frozenset(r for r in (p.strip() for p in roles.split(",")) if r))


def _carries_user(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return any(key == USER_ID_KEY for key, _ in context.invocation_metadata() or ())


class EndUserServerInterceptor(WrappingServerInterceptor):
    """Sets `current_end_user` from trusted callers' metadata; enforces method requirements."""

    def __init__(
        self,
        requirement: RequirementOf,
        identity_of: IdentityOf,
        *,
        trusted: frozenset[str],
        on_own_authority: frozenset[str] = frozenset(),
        on_denied: OnDenied | None = None,
    ) -> None:
        super().__init__()
        self._requirement = requirement
        self._identity_of = identity_of
        self._trusted = trusted
        self._own = on_own_authority
        self._on_denied = on_denied
        self._names: dict[str, str | None] = {}

    def _caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        peer = peer_identity(context)
        if peer is None:
            return NO_IDENTITY
        try:
            name = self._names[peer]
        except KeyError:
            name = self._names[peer] = self._identity_of(peer)
        return NO_IDENTITY if name is None else name

    async def _admit(
        self, method: str, need: Requirement | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[EndUser | None, str | None]:
        """(the end user, the service acting on its own authority), or the call is aborted."""
        metadata = context.invocation_metadata()
        caller = self._caller(context)
        user = parse_end_user(metadata) if caller in self._trusted else None
        own = caller if caller in self._own else None
        if need is None or own is not None:
            return user, own
        if user is None:
            await self._deny(
                context, method, caller, grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs an authenticated end user",
            )  # fmt: skip
        elif need.roles and not (need.roles & user.roles):
            await self._deny(
                context, method, caller, grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs the role {' or '.join(sorted(need.roles))}",
            )  # fmt: skip
        return user, None

    async def _deny(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        caller: str,
        code: grpc.StatusCode,
        details: str,
    ) -> None:
        log.info("end user refused caller=%s method=%s code=%s", caller, method, code.name)
        if self._on_denied is not None:
            self._on_denied(method, caller, code)
        await context.abort(code, details)

    def wrap_unary(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        need = self._requirement(method)
        admit = self._admit

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if need is None and not _carries_user(context):
                return await behaviour(request, context)  # nothing to check or believe
            user, own = await admit(method, need, context)
            user_token = current_end_user.set(user)
            own_token = calling_service.set(own)
            try:
                return await behaviour(request, context)
            finally:
                calling_service.reset(own_token)
                current_end_user.reset(user_token)

        return guarded

    def wrap_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        need = self._requirement(method)
        admit = self._admit

        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if need is not None or _carries_user(context):
                user, own = await admit(method, need, context)
                # An async generator's body runs in the call's task context; set once.
                current_end_user.set(user)
                calling_service.set(own)
            async for response in behaviour(request, context):
                yield response

        return guarded


class EndUserClientInterceptor(ClientInterceptor):
    """Adds the current end user's metadata to every call that does not carry it already."""

    def details_for(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """`details` with the current end user's metadata, unless the call sets its own
        (shared with the mesh's fused client chain, mesh/client/fused.py)."""
        user = current_end_user.get()
        if user is None:
            return details
        for key, _ in details.metadata or ():
            if key == USER_ID_KEY:
                return details  # set explicitly on this call
        return with_metadata(details, user.metadata())

    @returns_call
    async def intercept(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self.details_for(client_call_details), request)

    intercept_unary_unary = intercept_unary_stream = intercept  # type: ignore[assignment]
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]
