"""The server chain applied once, when a service's handlers are registered.

grpc.aio runs every server interceptor on every call: a coroutine, a
`functools.partial` and a trip through its interceptor pipeline each, before
the behaviour even starts (~10 µs of server CPU per call for one pass-through
interceptor on the 2-core box, docs/performance-log.md, "Quiet box, 2026-12-02"). Yet the mesh's
server interceptors decide nothing at that point: they only wrap the method's
handler, the same way for every call of the method.

`ChainRegistrar` does that wrapping once. It stands in for the `grpc.aio.Server`
where servicers are added (`add_XServicer_to_server(servicer, registrar)`,
health, reflection): every `RpcMethodHandler` passed to
`add_registered_method_handlers`, and every one a generic handler added with
`add_generic_rpc_handlers` returns, is wrapped by the chain (outermost first,
as a server's `interceptors=` list) before grpc sees it, so the server runs
the chain with no grpc.aio interceptor at all.

Only `MethodWrapper`s can run this way (`wrap_method(method, handler)`: the
mesh's own server interceptors). `split_chain` keeps the chain's order: the
longest run of them at the inner end of the chain is registered, everything
before it (an interceptor that decides per call, e.g. a test's or a
service's own) stays a grpc.aio interceptor, which grpc runs outside the
registered handlers, exactly as it runs the earlier interceptors of a list.

Limits: a generic handler that returns a new handler object per call is
wrapped per call (as the per-method caches of the interceptors re-wrap it
today); a method's handler is what grpc finds for it, so a call of an unknown
method (UNIMPLEMENTED) reaches no wrapper, as it reaches no interceptor's
behaviour. Registering after the server started is as unsafe as grpc says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import grpc

from interceptors._handler import answering_unimplemented

# Generic in the type stubs only.
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    Handler = ServerInterceptor = Any
    _GenericHandler = grpc.GenericRpcHandler


@runtime_checkable
class MethodWrapper(Protocol):
    """A server interceptor that can wrap a method's handler once, ahead of any call."""

    def wrap_method(self, method: str, handler: Handler) -> Handler:
        """The handler to serve `method` ("/pkg.Service/Method") with, around `handler`."""


def split_chain(
    chain: Sequence[Any],
) -> tuple[list[ServerInterceptor], list[MethodWrapper]]:
    """(grpc.aio interceptors, wrappers to register): the longest inner run of `chain`
    whose members are all `MethodWrapper`s is registered; the rest stays interceptors."""
    cut = len(chain)
    while cut > 0 and isinstance(chain[cut - 1], MethodWrapper):
        cut -= 1
    return list(chain[:cut]), list(chain[cut:])


def wrap_method(wrappers: Sequence[MethodWrapper], method: str, handler: Handler) -> Handler:
    """`handler` wrapped by every wrapper, the first one outermost (a method the
    servicer does not implement first made async: `answering_unimplemented`)."""
    handler = answering_unimplemented(handler)
    for wrapper in reversed(wrappers):
        handler = wrapper.wrap_method(method, handler)
    return handler


class _Wrapped:
    """Wrapped handlers per method, made once while the inner handler stays the same."""

    def __init__(self, wrappers: Sequence[MethodWrapper]) -> None:
        self._wrappers = tuple(wrappers)
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    def __call__(self, method: str, handler: Handler) -> Handler:
        hit = self._cache.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = wrap_method(self._wrappers, method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped


class _ChainedGenericHandler(_GenericHandler):
    """A generic handler whose method handlers come out wrapped by the chain."""

    def __init__(self, inner: _GenericHandler, wrapped: _Wrapped) -> None:
        self._inner = inner
        self._wrapped = wrapped

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._wrapped(handler_call_details.method, handler)


class ChainRegistrar(grpc.aio.Server):
    """The server as servicers see it: what they register is wrapped by the chain.

    Everything but the two registration methods is the server's own (`server`).
    """

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[MethodWrapper]) -> None:
        self.server = server
        self._wrapped = _Wrapped(wrappers)
        self._plain = not wrappers

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[_GenericHandler]) -> None:
        handlers = tuple(generic_rpc_handlers)
        if not self._plain:
            handlers = tuple(_ChainedGenericHandler(h, self._wrapped) for h in handlers)
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Handler]
    ) -> None:
        wrapped = {
            name: handler if self._plain else self._wrapped(f"/{service_name}/{name}", handler)
            for name, handler in method_handlers.items()
        }
        # Public since grpcio 1.63; the type stubs predate it.
        self.server.add_registered_method_handlers(service_name, wrapped)  # type: ignore[attr-defined]

    def add_insecure_port(self, address: str) -> int:
        return self.server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self.server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - grpc's signature
        return await self.server.wait_for_termination(timeout)


def chained_server(
    chain: Sequence[Any], *, registered: bool = True, options: Sequence[Any] = ()
) -> ChainRegistrar:
    """A `grpc.aio.server` running `chain` (outermost first): its registrable inner run
    wrapped at registration (`registered`), the rest as grpc.aio interceptors. Add the
    servicers to the returned registrar; its `.server` is the server itself."""
    outer, inner = split_chain(chain) if registered else (list(chain), [])
    server = grpc.aio.server(interceptors=outer or None, options=list(options))
    return ChainRegistrar(server, inner)
