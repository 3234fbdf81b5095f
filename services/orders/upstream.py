"""The services the order saga calls, and what their errors mean to an orders caller.

Saga steps call through `call()`, which turns a failed RPC into `UpstreamError`
carrying the upstream's code, message and `ErrorInfo` reason. The saga records
exactly those, so the first caller and a later retry of the same order (which
gets the recorded failure replayed) see the same status. `public_error` maps a
recorded failure to the status CreateOrder promises: NOT_FOUND for an unknown
user or product, FAILED_PRECONDITION for missing stock or a declined card,
UNAVAILABLE when a dependency is down or broken.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc

from base.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    details_of,
)

if TYPE_CHECKING:
    from shop.inventory.v1.inventory_pb2_grpc import (
        InventoryServiceAsyncStub,
        ReservationServiceAsyncStub,
    )
    from shop.payments.v1.payments_pb2_grpc import PaymentServiceAsyncStub
    from shop.users.v1.users_pb2_grpc import UserServiceAsyncStub

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Upstreams:
    """Stubs of the services the saga calls (discovery-aware in production)."""

    users: UserServiceAsyncStub
    inventory: InventoryServiceAsyncStub
    reservations: ReservationServiceAsyncStub
    payments: PaymentServiceAsyncStub


class UpstreamError(ServiceError):
    """A call to another service failed with `code`; keeps its message and reason."""

    def __init__(
        self,
        service: str,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message, reason=reason)
        self.code = code
        self.service = service
        self.violations = violations


async def call(service: str, rpc: Callable[[], Awaitable[R]]) -> R:
    """Await one RPC; a failure becomes `UpstreamError` (saga classification keeps working:
    UNAVAILABLE/DEADLINE_EXCEEDED/ABORTED stay transient, the rest is a business failure)."""
    try:
        return await rpc()
    except grpc.aio.AioRpcError as exc:
        bad_request, info = details_of(exc)
        violations = tuple(
            FieldViolation(v.field, v.description)
            for v in (bad_request.field_violations if bad_request else ())
        )
        raise UpstreamError(
            service,
            exc.code(),
            exc.details() or f"{service} answered {exc.code().name}",
            reason=info.reason if info else "",
            violations=violations,
        ) from exc


def has_reason(exc: BaseException, code: grpc.StatusCode, reason: str) -> bool:
    return isinstance(exc, ServiceError) and exc.code == code and exc.reason == reason


_DOWN = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"})


def public_error(code: str, message: str, reason: str) -> ServiceError:
    """The error a CreateOrder/CancelOrder caller gets for a saga that failed with `code`."""
    if code == "NOT_FOUND":
        return NotFound(message, reason=reason)
    if code == "FAILED_PRECONDITION":
        return FailedPrecondition(message, reason=reason)
    if code == "ABORTED":
        return Aborted(message, reason=reason)
    if code == "INVALID_ARGUMENT":
        # Orders validates what the upstreams validate; should one still refuse,
        # the caller learns which value, not a server error.
        return InvalidArgument([], message, reason=reason or "INVALID_ARGUMENT")
    if code in _DOWN:
        return Unavailable(message, reason=reason or "DEPENDENCY_UNAVAILABLE")
    # INTERNAL, UNKNOWN, UNIMPLEMENTED...: a dependency (or a step) is broken; from the
    # caller's side the order could not be placed now, which is what UNAVAILABLE says.
    return Unavailable(f"the order could not be placed: {message}", reason="DEPENDENCY_FAILED")
