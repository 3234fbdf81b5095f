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

Cheap per call (`_fastpath.MEMO_CALLER`, on unless `MESH_FASTPATH=0`): the
peer's identity is read from the auth context once per connection, not per
call (`peer_identity`), and the verdict is kept per (method, identity): both
inputs of the decision, `allowed(method)` and `identity_of(peer)`, are fixed
for the process (the contracts' options in the descriptor pool, the trust
domain), so a kept verdict is the one the call would get (nothing reloads
them; a new policy means a new process). A denied call is still logged,
counted and aborted every time; only the deciding is skipped.

Limits: only the certificate's single URI SAN counts (gRPC fills
`peer_spiffe_id` only then); identities are not re-checked on a long-lived
stream after the peer's certificate has expired (TLS checks at the handshake).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any, Final

import grpc
from opentelemetry import trace

from interceptors import _fastpath
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

    Read once per call (the caller policy, the end-user interceptor and an exempt
    fault rule each ask), and with `_fastpath.MEMO_CALLER` once per connection
    (`_connection_identity`): `auth_context()` builds a dict of every TLS property,
    the peer's PEM certificate included (2.9-3.8 µs hot, 5-16 µs on the loaded box),
    where the connection's check costs ~0.6 µs (`python -m bench policy`)."""
    read = _read.get()
    if read is not None and read[0] is context:
        return read[1]
    peer = _connection_identity(context) if _fastpath.MEMO_CALLER else _auth_identity(context)
    _read.set((context, peer))
    return peer


def _auth_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The SPIFFE id read from the auth context (every TLS property built: the dear read)."""
    values = list(context.auth_context().get("peer_spiffe_id") or ())
    return bytes(values[0]).decode("utf-8", "replace") if values else None


MEMO_CONNECTIONS: Final = 4096
"""How many peer addresses `_connection_identity` remembers; past it the oldest entry goes
(that connection's next call reads the auth context again: slower, never wrong)."""

# Peer address -> (identity property name, identity values, SPIFFE id) as last read from
# a connection at that address. Insertion-ordered: the first entry is the oldest.
_connections: dict[str, tuple[str | None, Any, str | None]] = {}


def _connection_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The SPIFFE id kept for the call's connection, read from the auth context when the
    connection is new.

    No public API names the connection, so the entry is found by the peer's address
    (`context.peer()`, which another client can reuse once the connection closes, or hold
    at the same time towards another port of the server) and believed only when the
    call's certificate presents the same identities as the one it was read from:
    `peer_identity_key()` (the property gRPC took them from: the subject alternative
    names, else the common name) and `peer_identities()` (every SAN value, URI and DNS
    alike) must both be equal. gRPC derives `peer_spiffe_id` from the SAN values alone
    (the single URI SAN), so equal SANs give the same id, and a different certificate
    on a reused address is read afresh: it is never given the old identity. The three
    reads cost ~0.6 µs hot against `auth_context()`'s 2.9-3.8 µs (`python -m bench
    policy`).
    A connection without identities (plaintext, no client certificate) is read every
    call: nothing would tell two of them apart.

    Limit: `peer_identities()` does not say which kind each SAN is, so the check relies on
    the trusted CA never signing a DNS or e-mail SAN spelled like a SPIFFE URI
    (`spiffe://...` is no valid host name or address; the mesh's own issuer writes one URI
    SAN and one DNS SAN `<service>.<trust domain>`)."""
    identities = context.peer_identities()
    if identities is None:
        return _auth_identity(context)
    address = context.peer()
    key = context.peer_identity_key()
    entry = _connections.get(address)
    if entry is not None and entry[1] == identities and entry[0] == key:
        return entry[2]
    peer = _auth_identity(context)
    if entry is not None:
        _connections.pop(address, None)  # re-inserted below as the newest
    _keep(_connections, address, (key, identities, peer), MEMO_CONNECTIONS)
    return peer


def _keep(memo: dict[Any, Any], key: Any, value: Any, cap: int) -> None:
    """`memo[key] = value`, dropping the oldest entry first when `memo` holds `cap`."""
    if len(memo) >= cap:
        with contextlib.suppress(StopIteration, RuntimeError, KeyError):
            del memo[next(iter(memo))]
    memo[key] = value


def forget_connections() -> None:
    """Drop every kept connection identity (tests; nothing needs it in a server)."""
    _connections.clear()


# A denial: (caller label for the log and metrics, status code, details).
Denial = tuple[str, grpc.StatusCode, str]

MEMO_VERDICTS: Final = 1024
"""How many caller identities' verdicts a method keeps; past it the oldest goes."""

_UNKNOWN: Final[Any] = object()


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
        # Per method: the verdict per caller's SPIFFE id (None: no identity), when kept.
        self._kept: dict[str, dict[str | None, Denial | None]] = {}

    def _caller(self, peer: str) -> str | None:
        try:
            return self._names[peer]
        except KeyError:
            name = self._names[peer] = self._identity_of(peer)
            return name

    def _decide(
        self, method: str, allowed: frozenset[str] | None, peer: str | None
    ) -> Denial | None:
        """None: admitted; else why not. Depends on the method and the peer's id only."""
        caller = None if peer is None else self._caller(peer)
        if caller is None:
            if peer is None:
                return (
                    NO_IDENTITY, grpc.StatusCode.UNAUTHENTICATED,
                    f"{method} needs a mesh identity (client certificate)",
                )  # fmt: skip
            return (
                UNKNOWN_IDENTITY, grpc.StatusCode.UNAUTHENTICATED,
                f"identity {peer!r} is not one of this mesh's",
            )  # fmt: skip
        if allowed is None or ANY_CALLER in allowed or caller in allowed:
            return None
        return caller, grpc.StatusCode.PERMISSION_DENIED, f"{caller} may not call {method}"

    def _verdicts(
        self, method: str
    ) -> Callable[[grpc.aio.ServicerContext[Any, Any]], Denial | None]:
        """The method's check of a call: the verdict kept per caller identity (at most
        `MEMO_VERDICTS`, oldest dropped first) with `_fastpath.MEMO_CALLER` as selected
        now, else decided on every call."""
        allowed = self._allowed(method)
        decide = self._decide
        if not _fastpath.MEMO_CALLER:

            def per_call(context: grpc.aio.ServicerContext[Any, Any]) -> Denial | None:
                return decide(method, allowed, peer_identity(context))

            return per_call
        kept = self._kept.setdefault(method, {})

        def memoised(context: grpc.aio.ServicerContext[Any, Any]) -> Denial | None:
            peer = peer_identity(context)
            verdict = kept.get(peer, _UNKNOWN)
            if verdict is _UNKNOWN:
                verdict = decide(method, allowed, peer)
                _keep(kept, peer, verdict, MEMO_VERDICTS)
            denial: Denial | None = verdict
            return denial

        return memoised

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
        check = self._verdicts(method)
        deny = self._deny

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            denial = check(context)
            if denial is not None:
                await deny(context, method, *denial)  # raises: abort
            return await behaviour(request, context)

        return guarded

    def wrap_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        check = self._verdicts(method)
        deny = self._deny

        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            denial = check(context)
            if denial is not None:
                await deny(context, method, *denial)  # raises: abort
            async for response in behaviour(request, context):
                yield response

        return guarded
