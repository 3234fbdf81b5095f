"""Domain errors, the bottom layer that services, the mesh and the interceptors all import.

A servicer (or any mesh code running under one) raises one of these; the server
error interceptor (`interceptors.errors`) turns it into its status code with
`google.rpc.Status` details (`BadRequest` field violations, `ErrorInfo` with a
machine-readable reason). This module depends on grpc's status codes and the
googleapis error protos only, so it can sit below every other layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "shop-mesh"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field: `field` is a path such as `items[2].quantity`."""

    field: str
    description: str


class ServiceError(Exception):
    """Base of the domain errors; `code` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # UPPER_SNAKE_CASE reason for ErrorInfo, e.g. "INSUFFICIENT_STOCK".
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})


class InvalidArgument(ServiceError):
    """The request is malformed; carries every field violation found."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        message: str = "",
        *,
        reason: str = "INVALID_ARGUMENT",
    ) -> None:
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid argument", reason=reason)


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """A concurrency conflict the caller may retry (optimistic lock lost)."""

    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    """A dependency is down or overloaded; the caller may retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    """A quota or throttle refused the call; `retry_after_s` (if set) becomes a RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


@dataclass
class Violations:
    """Collects field violations while validating; `raise_if_any()` at the end."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_path: str, description: str) -> None:
        self.items.append(FieldViolation(field_path, description))

    def check(self, ok: bool, field_path: str, description: str) -> bool:
        """Record a violation unless `ok`; returns `ok` so checks can be chained."""
        if not ok:
            self.add(field_path, description)
        return ok

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def status_for(error: ServiceError) -> status_pb2.Status:
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if isinstance(error, InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad_request)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason or error.code.name, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    status.details.add().Pack(info)
    retry_after_s = getattr(error, "retry_after_s", None)
    if retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(0, round(retry_after_s * 1000)))
        status.details.add().Pack(retry)
    return status


def details_of(
    error: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.BadRequest | None, error_details_pb2.ErrorInfo | None]:
    """The `BadRequest` and `ErrorInfo` details a failed call carries (None when absent)."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]  # duck-typed: code/details/trailers
    except ValueError:
        return None, None
    bad_request: error_details_pb2.BadRequest | None = None
    info: error_details_pb2.ErrorInfo | None = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
    return bad_request, info
