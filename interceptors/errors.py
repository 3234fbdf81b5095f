"""The server interceptor that turns what a handler raises into a gRPC status.

A servicer raises a `base.errors.ServiceError`; this interceptor turns it into
its status code with `google.rpc.Status` details (`BadRequest` field
violations, `ErrorInfo` with a machine-readable reason). Anything else a
servicer raises becomes INTERNAL with an error id that is logged, never a
traceback sent to the caller.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from base.errors import ERROR_DOMAIN, ServiceError, status_for
from interceptors._handler import StreamBehaviour, UnaryBehaviour, WrappingServerInterceptor

log = logging.getLogger(__name__)


async def _abort_with(
    context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status
) -> None:
    converted = rpc_status.to_status(status)
    await context.abort(converted.code, converted.details, converted.trailing_metadata)


async def _abort_internal(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception
) -> None:
    # The caller gets an id to quote; the traceback stays in our logs.
    error_id = secrets.token_hex(8)
    log.error(
        "unhandled exception in %s (error id %s)",
        method,
        error_id,
        exc_info=error,
        extra={"error_id": error_id, "rpc_method": method},
    )
    status = status_pb2.Status(
        code=grpc.StatusCode.INTERNAL.value[0], message=f"internal error (id {error_id})"
    )
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"error_id": error_id}
        )
    )
    await _abort_with(context, status)


async def _abort_for(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception
) -> None:
    """Abort with the status of what a handler raised: a `ServiceError`'s own, else INTERNAL."""
    if isinstance(error, ServiceError):
        await _abort_with(context, status_for(error))
    else:
        await _abort_internal(context, method, error)


class ErrorServerInterceptor(WrappingServerInterceptor):
    """Turns what a handler raises into a status (all four arities).

    - `ServiceError` subclasses: their code and message, with `google.rpc.Status`
      details (`BadRequest` for `InvalidArgument`, `ErrorInfo` for all);
    - `context.abort(...)` (and cancellation): passed through unchanged;
    - anything else: INTERNAL "internal error (id ...)", the id and traceback
      logged, nothing of the exception sent to the caller.

    Put it innermost in the server chain so the outer interceptors (metrics,
    logging, tracing) see the status it produced.
    """

    def wrap_unary(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def translated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await _abort_for(context, method, err)

        return translated

    def wrap_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        async def translated(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await _abort_for(context, method, err)

        return translated
