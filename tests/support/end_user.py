"""Calling shop services directly as an end user (what the edge does after checking a token).

Services believe `x-mesh-user-id` / `x-mesh-roles` from mesh identities only
(interceptors/end_user.py); a test calling a service directly holds such an
identity (tests/support/pki.py), so it says who it acts for with metadata:

    await orders.GetOrder(req, metadata=as_user(alice))           # alice's own call
    await inventory.CreateProduct(req, metadata=as_user(bob, "admin"))

`mtls_channel` (tests/support/pki.py) adds `OPERATOR`, an admin end user, to every
call of a method that needs an end user and carries none: tests about sagas,
events or failover act as a shop operator. Tests about ownership pass their
users' metadata, or `end_user=None` for a channel that adds nothing.
`EndUserDefaults` is that channel's interceptor.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import grpc

from interceptors._call import method_name, with_metadata
from interceptors._client import ClientInterceptor, Continuation, returns_call
from interceptors.end_user import ROLES_KEY, USER_ID_KEY, EndUser

# The shop operator the test channels act for by default (an admin, not a stored user).
OPERATOR = EndUser("00000000-0000-4000-8000-00000000ad01", frozenset({"admin"}))

Metadata = tuple[tuple[str, str], ...]


def as_user(user_id: str, *roles: str) -> Metadata:
    """Call metadata acting for end user `user_id` holding `roles`."""
    return tuple(EndUser(user_id, frozenset(roles)).metadata())


def as_admin(user_id: str = OPERATOR.user_id) -> Metadata:
    """Call metadata acting for an admin end user."""
    return as_user(user_id, "admin")


def metadata_of(user: EndUser) -> Metadata:
    return tuple(user.metadata())


class EndUserDefaults(ClientInterceptor):
    """Adds `user`'s metadata to calls of methods that need an end user and carry none."""

    def __init__(self, user: EndUser) -> None:
        self._pairs = user.metadata()

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        from mesh.security.end_user import method_requirement

        if method_requirement(method_name(details)) is None:
            return details
        if any(key in (USER_ID_KEY, ROLES_KEY) for key, _ in details.metadata or ()):
            return details
        return with_metadata(details, self._pairs)

    @returns_call
    async def intercept(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    intercept_unary_unary = intercept_unary_stream = intercept  # type: ignore[assignment]
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]


class _SyncDetails(
    namedtuple(
        "_SyncDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class SyncEndUserDefaults(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc,type-arg]
    """The blocking-API twin of `EndUserDefaults` (unary calls, what the sync tests make)."""

    def __init__(self, user: EndUser) -> None:
        self._pairs = user.metadata()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        from mesh.security.end_user import method_requirement

        metadata = list(details.metadata or ())
        if method_requirement(details.method) is not None and not any(
            key in (USER_ID_KEY, ROLES_KEY) for key, _ in metadata
        ):
            details = _SyncDetails(
                details.method, details.timeout, [*metadata, *self._pairs],
                details.credentials, details.wait_for_ready,
                getattr(details, "compression", None),
            )  # fmt: skip
        return continuation(details, request)
