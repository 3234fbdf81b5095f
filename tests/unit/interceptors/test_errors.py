"""ErrorServerInterceptor: domain errors to statuses with details, crashes to INTERNAL + id."""

from __future__ import annotations

import logging
import re
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from base.errors import (
    ERROR_DOMAIN,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    details_of,
)
from interceptors.errors import ErrorServerInterceptor
from tests.support.ping import PingServicer
from tests.support.ping_calls import ARITIES, NOT_FOUND, channel, invoke_error


class Raising(PingServicer):
    """Raises `make(value)` in every arity; streams first send one message."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    async def Ping(self, request, context):  # type: ignore[override]
        if request.error_code:
            await context.abort(grpc.StatusCode(_code(request.error_code)), "aborted here")
        raise self.make(request.value)

    async def PingList(self, request, context):  # type: ignore[override]
        yield ping_pb2.PingResponse(value="before")
        raise self.make(request.value)

    async def PingStream(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            pass
        raise self.make("stream")

    async def PingBidi(self, request_iterator, context):  # type: ignore[override]
        async for req in request_iterator:
            yield ping_pb2.PingResponse(value="before")
            raise self.make(req.value)


def _code(value: int) -> Any:
    return next(c.value for c in grpc.StatusCode if c.value[0] == value)


@pytest.mark.parametrize("arity", ARITIES)
async def test_invalid_argument_carries_field_violations_and_error_info(start_server, arity):
    def make(_value: str) -> Exception:
        return InvalidArgument(
            [
                FieldViolation("items[2].quantity", "must be positive"),
                FieldViolation("email", "is required"),
            ]
        )

    srv = await start_server(Raising(make), interceptors=[ErrorServerInterceptor()])
    async with channel(srv.address) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "items[2].quantity: must be positive; email: is required"
    bad_request, info = details_of(err)
    assert bad_request is not None and info is not None
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("items[2].quantity", "must be positive"),
        ("email", "is required"),
    ]
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", ERROR_DOMAIN)


@pytest.mark.parametrize("arity", ARITIES)
async def test_service_errors_map_to_their_code_with_error_info(start_server, arity):
    def make(_value: str) -> Exception:
        return NotFound("order o-1 not found", reason="ORDER_NOT_FOUND", metadata={"id": "o-1"})

    srv = await start_server(Raising(make), interceptors=[ErrorServerInterceptor()])
    async with channel(srv.address) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "order o-1 not found")
    bad_request, info = details_of(err)
    assert bad_request is None and info is not None
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "ORDER_NOT_FOUND",
        ERROR_DOMAIN,
        {"id": "o-1"},
    )


async def test_reason_defaults_to_the_code_name(start_server):
    srv = await start_server(
        Raising(lambda _v: Unavailable("db down")), interceptors=[ErrorServerInterceptor()]
    )
    async with channel(srv.address) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    _, info = details_of(err)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert info is not None and info.reason == "UNAVAILABLE"


@pytest.mark.parametrize("arity", ARITIES)
async def test_unhandled_exception_becomes_internal_with_a_logged_id(start_server, caplog, arity):
    def make(value: str) -> Exception:
        return RuntimeError(f"password=hunter2 leaked {value}")

    srv = await start_server(Raising(make), interceptors=[ErrorServerInterceptor()])
    with caplog.at_level(logging.ERROR, logger="interceptors.errors"):
        async with channel(srv.address) as ch:
            err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert err.code() == grpc.StatusCode.INTERNAL
    match = re.fullmatch(r"internal error \(id ([0-9a-f]{16})\)", err.details() or "")
    assert match is not None, err.details()
    error_id = match.group(1)
    assert "hunter2" not in (err.debug_error_string() or "") + str(err.trailing_metadata())
    _, info = details_of(err)
    assert info is not None and info.metadata["error_id"] == error_id
    [record] = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])
    assert "Traceback" in caplog.text


async def test_context_abort_passes_through_unchanged(start_server):
    srv = await start_server(
        Raising(lambda _v: RuntimeError("unused")), interceptors=[ErrorServerInterceptor()]
    )
    async with channel(srv.address) as ch:
        err = await invoke_error(
            ping_pb2_grpc.PingServiceStub(ch),
            "unary_unary",
            request=ping_pb2.PingRequest(error_code=NOT_FOUND),
        )
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "aborted here")
    assert details_of(err) == (None, None)


async def test_without_the_interceptor_grpc_would_answer_unknown(start_server):
    # The behaviour the interceptor exists to replace (and proof the servicer raises).
    srv = await start_server(Raising(lambda _v: RuntimeError("boom")))
    async with channel(srv.address) as ch:
        err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), "unary_unary")
    assert err.code() == grpc.StatusCode.UNKNOWN
