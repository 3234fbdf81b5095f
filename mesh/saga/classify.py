"""Step errors: business (permanent: compensate now) or transient (retry the step first).

The runner takes any `Classifier`; `default_classifier` knows the domain errors
of `base.errors` and gRPC status codes.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from sqlalchemy.exc import DBAPIError, OperationalError

from base.errors import ServiceError
from mesh.saga.model import ErrorKind, SagaFailure

Classifier = Callable[[BaseException], ErrorKind]

# Codes that say "not now" rather than "no": the same call may succeed later.
TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a domain error or an RPC error; None for anything else."""
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    return None


# PostgreSQL serialization failure and deadlock: the transaction may simply be run again.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def is_transient_db_error(exc: BaseException) -> bool:
    """A database error after which the same transaction may succeed: SQLite "database is
    locked", a dropped connection, a PostgreSQL deadlock or serialization failure."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return state in _RETRYABLE_SQLSTATES
    return False


def default_classifier(exc: BaseException) -> ErrorKind:
    code = status_code(exc)
    if code is not None:
        return ErrorKind.TRANSIENT if code in TRANSIENT_CODES else ErrorKind.BUSINESS
    # A local step's statement hit a busy or lost database.
    if is_transient_db_error(exc):
        return ErrorKind.TRANSIENT
    # A local timeout or a dropped connection: the same call may work next time.
    if isinstance(exc, TimeoutError | ConnectionError):
        return ErrorKind.TRANSIENT
    # Anything else is a bug or an unknown failure: retrying will not fix it.
    return ErrorKind.BUSINESS


def failure_of(step: str, kind: ErrorKind, exc: BaseException) -> SagaFailure:
    """What to record (and replay to later callers) about `exc`."""
    detail = repr(exc)[:2000]
    if isinstance(exc, ServiceError):
        return SagaFailure(step, kind, exc.code.name, exc.message, exc.reason, detail)
    if isinstance(exc, grpc.aio.AioRpcError):
        return SagaFailure(step, kind, exc.code().name, exc.details() or "", "", detail)
    # Not a status: callers saw INTERNAL; the message stays internal too.
    return SagaFailure(step, kind, grpc.StatusCode.INTERNAL.name, f"step {step} failed", "", detail)
