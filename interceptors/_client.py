"""The base of the client interceptors: one class implements all four arities."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

# `async (details, request or request iterator) -> call`, from grpc.aio or the mesh's runner.
Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Any]

F = TypeVar("F", bound=Callable[..., Any])

# Set on intercept methods that return their continuation's call (or a call
# wrapping it), never a bare response or async iterable: a chain runner may
# then call them without a link that converts results (mesh/client/calls.py).
RETURNS_CALL = "__mesh_returns_call__"


def returns_call(method: F) -> F:
    """Mark an intercept method as returning a call object (see `RETURNS_CALL`).

    The mark is on the function: a subclass overriding the method is not marked.
    """
    setattr(method, RETURNS_CALL, True)
    return method


# The stubs make the interceptor bases generic; at run time they are not.
if TYPE_CHECKING:
    UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    ServerBase = grpc.aio.ServerInterceptor[Any, Any]
else:
    UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor
    StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor
    StreamStreamBase = grpc.aio.StreamStreamClientInterceptor
    ServerBase = grpc.aio.ServerInterceptor


class ClientInterceptor(UnaryUnaryBase, UnaryStreamBase, StreamUnaryBase, StreamStreamBase):
    """Subclasses define `intercept_*` for each arity, usually as one shared coroutine:

        async def intercept(self, continuation, client_call_details, request): ...
        intercept_unary_unary = intercept_unary_stream = intercept
        intercept_stream_unary = intercept_stream_stream = intercept

    (aliases, not delegating methods: no extra coroutine frame per call).
    On a plain grpc.aio channel install them with `interceptors.arity.for_channel`.
    """
