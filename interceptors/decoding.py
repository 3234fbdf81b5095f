"""Undecodable request bodies answer INVALID_ARGUMENT, not UNKNOWN.

grpc.aio parses the request before any interceptor's behaviour runs; when the
bytes are not a valid message (truncated, invalid UTF-8 in a string field) it
answers UNKNOWN "Unexpected DecodeError". This interceptor takes parsing over for
unary requests: the handler receives raw bytes, parses them itself and raises
`InvalidArgument` (reason MALFORMED_REQUEST), which the error interceptor maps.

It sits innermost in the mesh server chain (`mesh.server.server_interceptors`),
inside the error interceptor that maps the `InvalidArgument` it raises.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from base.errors import InvalidArgument

Deserializer = Callable[[bytes], Any]

# Generic in the type stubs only.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


def _malformed(method: str) -> InvalidArgument:
    return InvalidArgument(
        [], f"the request body is not a valid message for {method}", reason="MALFORMED_REQUEST"
    )


def _parse(method: str, deserialize: Deserializer, raw: bytes) -> Any:
    try:
        return deserialize(raw)
    except (DecodeError, UnicodeDecodeError, ValueError):
        raise _malformed(method) from None


class MalformedRequestInterceptor(_ServerInterceptor):
    """See the module docstring.

    The handler it returns for a method is made once and reused while the
    inner handler object stays the same: a new handler per call would also
    defeat the per-method caches of the interceptors outside it
    (interceptors._handler), which would then re-wrap every call.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self.wrap_method(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap_method(self, method: str, handler: Any) -> Any:
        """`handler` for `method`, parsing unary requests itself (once per method;
        interceptors.registered runs the chain so); others are returned as they are."""
        if handler.request_streaming or handler.request_deserializer is None:
            return handler
        return self._wrap(method, handler)

    @staticmethod
    def _wrap(method: str, handler: Any) -> Any:
        """A handler that parses the request itself (unary requests only)."""
        deserialize: Deserializer = handler.request_deserializer
        if handler.response_streaming:
            inner_stream = handler.unary_stream
            if inspect.isasyncgenfunction(inner_stream):

                async def streamed(raw: bytes, context: Any) -> AsyncIterator[Any]:
                    async for response in inner_stream(_parse(method, deserialize, raw), context):
                        yield response

                behaviour: Any = streamed
            else:  # responses written with context.write(): a coroutine function

                async def written(raw: bytes, context: Any) -> Any:
                    return await inner_stream(_parse(method, deserialize, raw), context)

                behaviour = written
            return grpc.unary_stream_rpc_method_handler(
                behaviour, request_deserializer=None,
                response_serializer=handler.response_serializer,
            )  # fmt: skip
        inner = handler.unary_unary

        async def unary(raw: bytes, context: Any) -> Any:
            return await inner(_parse(method, deserialize, raw), context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=handler.response_serializer
        )
