"""The mesh server chain in one interceptor, for the common case.

grpc.aio runs every server interceptor for every call (a coroutine and a
`functools.partial` each, ~2 µs apiece on this box), and each wrapping
interceptor adds a coroutine frame around the behaviour. The mesh chain is
six of them (tracing → metrics → logging → errors → deadline → decoding).
`FusedServerInterceptor` does the same work with one `intercept_service` and
one wrapper per method:

- the observers (`ObservingServerInterceptor`s: tracing, metrics, logging,
  deadline, in chain order) keep their code in their modules: their `begin`
  runs outermost first before the behaviour, their `end` innermost first after
  it, with the status the separate chain would give them;
- errors (`interceptors.errors`): a `ServiceError` becomes its status with
  details, any other exception INTERNAL with a logged error id, inside the
  observers, so they see the mapped status;
- decoding (`interceptors.decoding`): unary requests are parsed here, an
  undecodable body raising `InvalidArgument` that the error mapping turns
  into INVALID_ARGUMENT.

Results are the same as the separate chain's (statuses, details, metrics,
spans, access lines: `tests/integration/server/test_fused_chain.py`); the one
order difference, unobservable from outside, is that the deadline observer's
`end` runs after the error mapping instead of before it. Extra interceptors
(the caller policy, a service's own) go after it in the server's list, as
after the separate chain. `mesh.server.server_interceptors` uses it unless
the fast paths are forced off (`MESH_FASTPATH=0`: the six interceptors).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from interceptors._client import ServerBase
from interceptors._handler import (
    Continuation,
    ObservingServerInterceptor,
    StreamBehaviour,
    UnaryBehaviour,
    behaviour_of,
    status_of,
)
from interceptors.decoding import _parse
from interceptors.errors import _abort_for

_AbortError = grpc.aio.AbortError

Begin = Callable[[Any, Any], Any]
End = Callable[[Any, grpc.StatusCode, BaseException | None], None]


class FusedServerInterceptor(ServerBase):
    """See the module docstring. `observers` outermost first."""

    def __init__(
        self,
        observers: Sequence[ObservingServerInterceptor[Any, Any]],
        *,
        errors: bool = True,
        decoding: bool = True,
    ) -> None:
        self.observers = tuple(observers)
        self._errors = errors
        self._decoding = decoding
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
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap_method(self, method: str, handler: Any) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` wrapped for `method`, once (interceptors.registered runs the chain so)."""
        return self._wrap(method, handler)

    def _hooks(self, method: str) -> tuple[tuple[Begin, Any], ...]:
        return tuple((o.begin, o.prepare(method)) for o in self.observers)

    def _begin_all(self, method: str) -> tuple[Callable[[Any], Sequence[Any]], int]:
        """`begin_all(context)`: every observer's `begin`, outermost first, their states in
        order. The mesh's four observers get a function without a loop (per call)."""
        hooks = self._hooks(method)
        if len(hooks) == 4:
            (b0, p0), (b1, p1), (b2, p2), (b3, p3) = hooks

            def begin4(context: Any) -> Sequence[Any]:
                return (b0(p0, context), b1(p1, context), b2(p2, context), b3(p3, context))

            return begin4, 4

        def begin_n(context: Any) -> Sequence[Any]:
            return [begin(prepared, context) for begin, prepared in hooks]

        return begin_n, len(hooks)

    def _end_all(self) -> Callable[[Sequence[Any], Any, BaseException | None], None]:
        """`end_all(states, context, exc)`: every observer's `end`, innermost first, with
        the status the call ended with (`exc`: what it raised, None if it returned). The
        mesh's four observers get a function without a loop (per call)."""
        ends: tuple[End, ...] = tuple(reversed([o.end for o in self.observers]))
        if len(ends) == 4:
            e3, e2, e1, e0 = ends

            def end4(states: Sequence[Any], context: Any, exc: BaseException | None) -> None:
                code = status_of(context, exc)
                e3(states[3], code, exc)
                e2(states[2], code, exc)
                e1(states[1], code, exc)
                e0(states[0], code, exc)

            return end4

        def end_n(states: Sequence[Any], context: Any, exc: BaseException | None) -> None:
            code = status_of(context, exc)
            i = len(states)
            for end in ends:
                i -= 1
                end(states[i], code, exc)

        return end_n

    def _wrap(self, method: str, handler: Any) -> grpc.RpcMethodHandler[Any, Any]:
        h = handler
        # Decoding: unary requests with a deserializer are parsed by the wrapper.
        parse: Callable[[bytes], Any] | None = None
        deserializer = h.request_deserializer
        if self._decoding and not h.request_streaming and deserializer is not None:
            deserialize = deserializer

            def parse(raw: bytes) -> Any:
                return _parse(method, deserialize, raw)

            deserializer = None
        behaviour, factory = behaviour_of(h)
        if inspect.isasyncgenfunction(behaviour):
            wrapped: Any = self._wrap_stream(method, behaviour, parse)
        elif inspect.iscoroutinefunction(behaviour):
            wrapped = self._wrap_unary(method, behaviour, parse)
        else:
            # Synchronous behaviours: the separate chain passes them through too.
            return handler  # type: ignore[no-any-return]
        new: grpc.RpcMethodHandler[Any, Any] = factory(
            wrapped,
            request_deserializer=deserializer,
            response_serializer=h.response_serializer,
        )
        return new

    def _wrap_unary(
        self, method: str, behaviour: UnaryBehaviour, parse: Callable[[bytes], Any] | None
    ) -> UnaryBehaviour:
        begin_all, _ = self._begin_all(method)
        end_all = self._end_all()
        translate = self._errors

        async def fused(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            states = begin_all(context)
            try:
                try:
                    if parse is not None:
                        request = parse(request)
                    response = await behaviour(request, context)
                except _AbortError:
                    raise
                except Exception as err:
                    if not translate:
                        raise
                    await _abort_for(context, method, err)
                    response = None
            except BaseException as exc:
                end_all(states, context, exc)
                raise
            end_all(states, context, None)
            return response

        return fused

    def _wrap_stream(
        self, method: str, behaviour: StreamBehaviour, parse: Callable[[bytes], Any] | None
    ) -> StreamBehaviour:
        begin_all, _ = self._begin_all(method)
        end_all = self._end_all()
        translate = self._errors

        async def fused(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            states = begin_all(context)
            try:
                try:
                    if parse is not None:
                        request = parse(request)
                    async for response in behaviour(request, context):
                        yield response
                except _AbortError:
                    raise
                except Exception as err:
                    if not translate:
                        raise
                    await _abort_for(context, method, err)
            except BaseException as exc:
                end_all(states, context, exc)
                raise
            end_all(states, context, None)

        return fused
