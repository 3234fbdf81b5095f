"""Caller policy: each method says which service identities may call it.

The server's TLS handshake has already verified the peer's certificate (mTLS:
signed by the mesh CA, not expired); this interceptor reads the identity it
carries from the call's auth context (`peer_spiffe_id`, the certificate's URI
SAN) and, before the handler runs, answers

* `UNAUTHENTICATED` when the peer has no identity (a plaintext or certificate-less
  connection, which a mesh server does not accept anyway) or one that
  `identity_of` does not recognise (another trust domain, a malformed id);
* `PERMISSION_DENIED` when the identity is not among the method's allowed callers.

Generic: `allowed(full_method)` gives the allowed caller names (`"*"`: any
recognised identity; None: the method declares no policy, so any recognised
identity, as for health and reflection), `identity_of(peer_id)` turns the
peer's identity into a caller name. Both are computed once per method / per
peer id string. Denials are logged (caller, method, trace id) and reported to
`on_denied` (a metrics counter).

Limits: only the certificate's single URI SAN counts (gRPC fills
`peer_spiffe_id` only then); identities are not re-checked on a long-lived
stream after the peer's certificate has expired (TLS checks at the handshake).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from opentelemetry import trace

from interceptors._handler import StreamBehaviour, UnaryBehaviour, WrappingServerInterceptor

log = logging.getLogger(__name__)

ANY_CALLER = "*"
NO_IDENTITY = "-"
UNKNOWN_IDENTITY = "unknown"

Allowed = Callable[[str], frozenset[str] | None]
IdentityOf = Callable[[str], str | None]
OnDenied = Callable[[str, str, grpc.StatusCode], None]


# The call whose peer identity was last read in this task, and that identity. grpc.aio
# runs each call in its own task, so the value is the current call's (or a finished
# one's, told apart by the context object it holds: never another call's identity).
_read: ContextVar[tuple[Any, str | None] | None] = ContextVar(
    "shop_mesh_peer_identity", default=None
)


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The peer's SPIFFE id from the TLS auth context, or None (no TLS, no URI SAN).

    Read once per call: `auth_context()` builds a dict of every TLS property, the
    peer's PEM certificate included (~4-8 µs), and the caller policy, the end-user
    interceptor and an exempt fault rule each ask. Not cached beyond the call: no
    public API names the connection (`context.peer()`'s address and port can be
    reused by another client once the connection closes)."""
    read = _read.get()
    if read is not None and read[0] is context:
        return read[1]
    values = list(context.auth_context().get("peer_spiffe_id") or ())
    peer = bytes(values[0]).decode("utf-8", "replace") if values else None
    _read.set((context, peer))
    return peer


class CallerPolicyServerInterceptor(WrappingServerInterceptor):
    """Refuses callers the method's policy does not list, before any handler runs."""

    def __init__(
        self, allowed: Allowed, identity_of: IdentityOf, *, on_denied: OnDenied | None = None
    ) -> None:
        super().__init__()
        self._allowed = allowed
        self._identity_of = identity_of
        self._on_denied = on_denied
        self._names: dict[str, str | None] = {}

    def _caller(self, peer: str) -> str | None:
        try:
            return self._names[peer]
        except KeyError:
            name = self._names[peer] = self._identity_of(peer)
            return name

    async def _admit(
        self,
        method: str,
        allowed: frozenset[str] | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        peer = peer_identity(context)
        caller = None if peer is None else self._caller(peer)
        if caller is None:
            label = NO_IDENTITY if peer is None else UNKNOWN_IDENTITY
            await self._deny(
                context, method, label, grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a mesh identity (client certificate)"
                if peer is None else f"identity {peer!r} is not one of this mesh's",
            )  # fmt: skip
            return
        if allowed is None or ANY_CALLER in allowed or caller in allowed:
            return
        await self._deny(
            context, method, caller, grpc.StatusCode.PERMISSION_DENIED,
            f"{caller} may not call {method}",
        )  # fmt: skip

    async def _deny(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        caller: str,
        code: grpc.StatusCode,
        details: str,
    ) -> None:
        span_context = trace.get_current_span().get_span_context()
        trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else "-"
        log.warning(
            "denied caller=%s method=%s code=%s trace_id=%s", caller, method, code.name, trace_id
        )
        if self._on_denied is not None:
            self._on_denied(method, caller, code)
        await context.abort(code, details)

    def wrap_unary(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        allowed = self._allowed(method)
        admit = self._admit

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(method, allowed, context)
            return await behaviour(request, context)

        return guarded

    def wrap_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        allowed = self._allowed(method)
        admit = self._admit

        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await admit(method, allowed, context)
            async for response in behaviour(request, context):
                yield response

        return guarded
