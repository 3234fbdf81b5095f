"""Wrapping grpc.aio server handlers, in one place, so each server interceptor stays small.

A grpc.aio server interceptor gets the method's `RpcMethodHandler` and returns
one whose behaviour is wrapped. Whatever the arity, a behaviour is one of two
kinds, and that kind is what grpc.aio looks at to drive it:

- a coroutine function (unary-unary, stream-unary, and streaming responses
  written with `context.write()`): wrapped by `wrap_unary`;
- an async generator function (streaming responses): wrapped by `wrap_stream`.

The request argument (a message or a request iterator) is passed through
untouched, so one wrapper per kind covers all four arities. Wrapped handlers
are cached per method while the inner handler object stays the same, so a
call costs a dict lookup, not new closures and a new handler. Synchronous
behaviours (only possible with a migration thread pool) are passed through
unwrapped, with a warning: the mesh serves async servicers only. A method the
servicer does not implement is not one of them by the time a wrapper sees it
(`answering_unimplemented`, applied where the chain is registered).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeAlias, TypeVar

import grpc

from interceptors._client import ServerBase

log = logging.getLogger(__name__)

# Strings: the grpc types are generic in the stubs only.
UnaryBehaviour: TypeAlias = "Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]"
StreamBehaviour: TypeAlias = (
    "Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]"
)
Continuation: TypeAlias = (
    "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]"
)

M = TypeVar("M")
S = TypeVar("S")


def behaviour_of(handler: Any) -> tuple[Any, Callable[..., Any]]:
    """(the handler's behaviour, grpc's factory of a handler of the same arity)."""
    h = handler
    if h.request_streaming and h.response_streaming:
        return h.stream_stream, grpc.stream_stream_rpc_method_handler
    if h.request_streaming:
        return h.stream_unary, grpc.stream_unary_rpc_method_handler
    if h.response_streaming:
        return h.unary_stream, grpc.unary_stream_rpc_method_handler
    return h.unary_unary, grpc.unary_unary_rpc_method_handler


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary: Callable[[UnaryBehaviour], UnaryBehaviour],
    wrap_stream: Callable[[StreamBehaviour], StreamBehaviour],
) -> grpc.RpcMethodHandler[Any, Any]:
    """A new handler of the same arity whose behaviour is wrapped."""
    h: Any = handler
    behaviour, factory = behaviour_of(h)
    if inspect.isasyncgenfunction(behaviour):
        wrapped: Any = wrap_stream(behaviour)
    elif inspect.iscoroutinefunction(behaviour):
        wrapped = wrap_unary(behaviour)
    else:
        log.warning("not intercepting synchronous behaviour %r", behaviour)
        return handler
    new: grpc.RpcMethodHandler[Any, Any] = factory(
        wrapped,
        request_deserializer=h.request_deserializer,
        response_serializer=h.response_serializer,
    )
    return new


def answering_unimplemented(handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
    """`handler`, or, when its behaviour is grpc's generated answer for a method the
    servicer does not implement, the same handler with an async behaviour giving that
    answer: UNIMPLEMENTED "Method not implemented!".

    Why: the generated `*Servicer` base class answers such a method synchronously
    (`context.set_code(UNIMPLEMENTED)`, then `raise NotImplementedError`), which a
    chain of async wrappers cannot wrap: each passed it through with a warning (three
    per method in a service's log), and grpc.aio logged the raise as an unexpected
    error on every call and answered `Unexpected <class 'NotImplementedError'>: ...`.
    Answered async, the call goes through the chain like any other (metrics, access
    log, span) with grpc's own details."""
    h: Any = handler
    behaviour, factory = behaviour_of(h)
    if not _generated_default(behaviour):
        return handler
    return factory(
        _unimplemented_stream if h.response_streaming else _unimplemented,
        request_deserializer=h.request_deserializer,
        response_serializer=h.response_serializer,
    )


def _generated_default(behaviour: Any) -> bool:
    """Whether `behaviour` is grpc's generated answer for a method the servicer does not
    implement: a synchronous method of the generated `*Servicer` base class."""
    func = getattr(behaviour, "__func__", None)
    return (
        func is not None
        and not inspect.iscoroutinefunction(func)
        and not inspect.isasyncgenfunction(func)
        and str(getattr(func, "__module__", "")).endswith("_pb2_grpc")
        and func.__qualname__.split(".")[0].endswith("Servicer")
    )


_NOT_IMPLEMENTED = "Method not implemented!"  # what grpc's generated base class says


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_IMPLEMENTED)


async def _unimplemented_stream(
    request: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_IMPLEMENTED)
    yield  # an async generator, as a streaming response's behaviour is  # pragma: no cover


# A call cancelled this close to its deadline was cut by the caller's deadline. The
# server's deadline runs later than the caller's by the request's one-way trip (it is
# the caller's time left when sent, counted from arrival), so the caller's cancel,
# sent at its deadline, reaches the server about when the server's own timer fires, and
# on a loaded box first: the same call was counted CANCELLED or DEADLINE_EXCEEDED by
# chance (a CI run of tests/integration/client/test_fastpath.py saw both).
DEADLINE_SLACK_S = 0.05


def status_of(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    """The status a server call ends with, given how its behaviour ended."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        # After `context.abort()` / `set_code()` the context knows the code.
        code: grpc.StatusCode | None = context.code()
        if code is not None:
            return code
        return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= DEADLINE_SLACK_S:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # grpc.aio answers UNKNOWN for an exception escaping the handler.
    return grpc.StatusCode.UNKNOWN


class WrappingServerInterceptor(ServerBase, ABC):
    """Base of the server interceptors: subclasses say how to wrap each behaviour kind."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(  # type: ignore[override]  # None: no such method
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
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

    def wrap_method(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` wrapped for `method`, once (interceptors.registered runs the chain so)."""
        return wrap_handler(
            handler,
            lambda b: self.wrap_unary(method, b),
            lambda b: self.wrap_stream(method, b),
        )

    @abstractmethod
    def wrap_unary(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        """A coroutine function running `behaviour` (called once per method, not per call)."""

    @abstractmethod
    def wrap_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        """An async generator function running `behaviour` (once per method)."""


class ObservingServerInterceptor(WrappingServerInterceptor, ABC, Generic[M, S]):
    """A server interceptor that only watches calls: prepare once per method, begin, end.

    `begin` runs in the call's task before the behaviour (so a contextvar it
    sets is visible to the handler), `end` after it with the final status.
    """

    @abstractmethod
    def prepare(self, method: str) -> M:
        """Per-method state computed once (labels, span name...)."""

    @abstractmethod
    def begin(self, prepared: M, context: grpc.aio.ServicerContext[Any, Any]) -> S:
        """Called when the call starts; returns per-call state for `end`."""

    @abstractmethod
    def end(self, state: S, code: grpc.StatusCode, error: BaseException | None) -> None:
        """Called once when the behaviour has finished, with the call's status."""

    def wrap_unary(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        prepared = self.prepare(method)
        begin, end = self.begin, self.end

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            state = begin(prepared, context)
            try:
                response = await behaviour(request, context)
            except BaseException as exc:
                end(state, status_of(context, exc), exc)
                raise
            end(state, status_of(context, None), None)
            return response

        return observed

    def wrap_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        prepared = self.prepare(method)
        begin, end = self.begin, self.end

        async def observed(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            state = begin(prepared, context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as exc:
                end(state, status_of(context, exc), exc)
                raise
            end(state, status_of(context, None), None)

        return observed
