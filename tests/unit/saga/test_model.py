"""Definitions, contexts, retry delays, error classification and replayed failures."""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from base.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from mesh.saga import (
    ErrorKind,
    Phase,
    SagaContext,
    SagaDefinition,
    SagaFailed,
    SagaFailure,
    SagaRunner,
    Step,
    StepRetry,
    default_classifier,
    failure_of,
)
from mesh.saga.classify import is_transient_db_error


async def _noop(ctx: SagaContext) -> dict[str, Any] | None:
    return None


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, "")


def test_definition_validates_steps() -> None:
    with pytest.raises(ValueError, match="no steps"):
        SagaDefinition("x", [])
    with pytest.raises(ValueError, match="unique"):
        SagaDefinition("x", [Step("a", _noop), Step("a", _noop)])
    with pytest.raises(ValueError, match="empty"):
        SagaDefinition("", [Step("a", _noop)])
    d = SagaDefinition("x", [Step("a", _noop)])
    assert isinstance(d.steps, tuple)


def test_runner_rejects_mismatched_definition_keys() -> None:
    from prometheus_client import CollectorRegistry

    d = SagaDefinition("x", [Step("a", _noop)])
    with pytest.raises(ValueError, match="registered as"):
        SagaRunner(None, {"y": d}, CollectorRegistry())  # type: ignore[arg-type]


def test_idempotency_keys_are_deterministic_per_phase() -> None:
    fwd = SagaContext("s-1", "order", "charge", Phase.FORWARD, {}, attempt=1)
    again = SagaContext("s-1", "order", "charge", Phase.FORWARD, {}, attempt=3)
    back = SagaContext("s-1", "order", "charge", Phase.COMPENSATE, {}, attempt=1)
    assert fwd.idempotency_key == again.idempotency_key == "s-1:charge"
    assert back.idempotency_key == "s-1:charge:compensate"
    with pytest.raises(RuntimeError, match="not local"):
        _ = fwd.tx


def test_retry_delay_grows_capped_and_jittered() -> None:
    r = StepRetry(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    rng = random.Random(7)
    for failed, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        for _ in range(20):
            assert cap / 2 <= r.delay(failed, rng) <= cap
    for bad in [
        {"max_attempts": 0},
        {"initial_backoff_s": 2.0, "max_backoff_s": 1.0},
        {"multiplier": 0.5},
    ]:
        with pytest.raises(ValueError):
            StepRetry(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (FailedPrecondition("no stock"), ErrorKind.BUSINESS),
        (NotFound("no user"), ErrorKind.BUSINESS),
        (InvalidArgument([FieldViolation("qty", "must be > 0")]), ErrorKind.BUSINESS),
        (Unavailable("down"), ErrorKind.TRANSIENT),
        (Aborted("conflict"), ErrorKind.TRANSIENT),
        (rpc_error(grpc.StatusCode.UNAVAILABLE), ErrorKind.TRANSIENT),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), ErrorKind.TRANSIENT),
        (rpc_error(grpc.StatusCode.NOT_FOUND), ErrorKind.BUSINESS),
        (rpc_error(grpc.StatusCode.INTERNAL), ErrorKind.BUSINESS),
        (TimeoutError(), ErrorKind.TRANSIENT),
        (ConnectionResetError(), ErrorKind.TRANSIENT),
        (KeyError("bug"), ErrorKind.BUSINESS),
        (OperationalError("UPDATE", {}, Exception("database is locked")), ErrorKind.TRANSIENT),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), ErrorKind.BUSINESS),
    ],
)
def test_default_classifier(exc: BaseException, kind: ErrorKind) -> None:
    assert default_classifier(exc) is kind


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def test_transient_database_errors() -> None:
    assert is_transient_db_error(OperationalError("UPDATE", {}, Exception("locked")))
    assert is_transient_db_error(DBAPIError("UPDATE", {}, _PgError("40P01")))  # deadlock
    assert is_transient_db_error(DBAPIError("UPDATE", {}, _PgError("40001")))  # serialization
    lost = DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_transient_db_error(lost)
    assert not is_transient_db_error(DBAPIError("UPDATE", {}, _PgError("23505")))
    assert not is_transient_db_error(IntegrityError("INSERT", {}, Exception("dup")))
    assert not is_transient_db_error(ValueError())


def test_failure_records_code_reason_message() -> None:
    f = failure_of("reserve", ErrorKind.BUSINESS, FailedPrecondition("no stock", reason="NO_STOCK"))
    assert (f.step, f.code, f.message, f.reason) == (
        "reserve",
        "FAILED_PRECONDITION",
        "no stock",
        "NO_STOCK",
    )
    r = failure_of("charge", ErrorKind.TRANSIENT, rpc_error(grpc.StatusCode.UNAVAILABLE, "down"))
    assert (r.code, r.message) == ("UNAVAILABLE", "down")
    bug = failure_of("x", ErrorKind.BUSINESS, KeyError("secret internals"))
    assert bug.code == "INTERNAL"
    assert "secret" not in bug.message and "secret" in bug.detail
    assert SagaFailure.from_json(f.to_json()) == f


def test_saga_failed_replays_the_recorded_status() -> None:
    f = SagaFailure("reserve", ErrorKind.BUSINESS, "FAILED_PRECONDITION", "no stock", "NO_STOCK")
    err = SagaFailed("s-1", f)
    assert err.code is grpc.StatusCode.FAILED_PRECONDITION
    assert (err.message, err.reason) == ("no stock", "NO_STOCK")
    odd = SagaFailed("s-2", SagaFailure("x", ErrorKind.BUSINESS, "NOPE", ""))
    assert odd.code is grpc.StatusCode.INTERNAL and odd.message
