"""The call objects MeshChannel's multicallables return, and the chain runner.

A stub's call starts its interceptor chain when first awaited, iterated or
asked for its status (not when created: there is no task to run it, the chain
runs inline in the awaiting task). Each continuation is an interceptor's
bound method folded around the next one; interceptors follow the grpc.aio
contract: a continuation returns the (not yet finished) call, an interceptor
returns a call, or a response (unary responses) / an async iterable
(streamed responses), which the links turn back into call objects.

The call objects are awaitable or async-iterable as their arity says and
expose code(), details(), trailing_metadata()... Failures raise
grpc.aio.AioRpcError, including calls the mesh had to cut (CANCELLED).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Sequence
from typing import Any, Final, cast

import grpc
from grpc.aio import ClientCallDetails, Metadata

from interceptors import _fastpath
from interceptors._client import RETURNS_CALL

Continuation = Callable[[ClientCallDetails, Any], Awaitable[Any]]
Intercept = Callable[..., Awaitable[Any]]

_OK_CODE: Final = grpc.StatusCode.OK
_EOF: Final[Any] = grpc.aio.EOF  # type: ignore[attr-defined]
_EMPTY_DETAILS: Final = ""


def _error_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _error_details(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.details() or ""
    return f"{type(exc).__name__}: {exc}"


# -- results an interceptor may return instead of a call ------------------------------------


class _ResponseCall(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A finished unary call made from a response an interceptor returned (e.g. a cache)."""

    __slots__ = ("_response",)

    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response
        yield  # a generator that returns at once

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, callback: Any) -> None:
        callback(self)

    def time_remaining(self) -> float | None:
        return None

    async def initial_metadata(self) -> Metadata:
        return Metadata()

    async def trailing_metadata(self) -> Metadata:
        return Metadata()

    async def code(self) -> grpc.StatusCode:
        return _OK_CODE

    async def details(self) -> str:
        return _EMPTY_DETAILS

    async def debug_error_string(self) -> str:
        return _EMPTY_DETAILS

    async def wait_for_connection(self) -> None:
        return None


class _StreamResponses:
    """Responses an interceptor returned as an async iterable; status from the real call."""

    __slots__ = ("_iterable", "_iterator", "_owner")

    def __init__(self, iterable: AsyncIterable[Any], owner: MeshCallBase) -> None:
        self._iterable = iterable
        self._iterator: AsyncIterator[Any] | None = None
        self._owner = owner  # its `_last` is the last call the terminal started

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._iterator is None:
            self._iterator = self._iterable.__aiter__()
        return self._iterator

    async def read(self) -> Any:
        try:
            return await self.__aiter__().__anext__()
        except StopAsyncIteration:
            return _EOF

    @property
    def real(self) -> Any:
        return self._owner._last


# -- the chain runner -----------------------------------------------------------------------


def unary_link(intercept: Intercept, nxt: Continuation) -> Continuation:
    """`nxt` wrapped in `intercept`; a response it returns becomes a finished call."""

    async def link(details: ClientCallDetails, request: Any) -> Any:
        result = await intercept(nxt, details, request)
        if type(result) in _fastpath.CALL_TYPES or isinstance(result, grpc.aio.UnaryUnaryCall):
            return result
        return _ResponseCall(result)

    return link


def stream_unary_link(intercept: Intercept, nxt: Continuation) -> Continuation:
    """As `unary_link`, for client-streaming calls."""

    async def link(details: ClientCallDetails, request_iterator: Any) -> Any:
        result = await intercept(nxt, details, request_iterator)
        if type(result) in _fastpath.CALL_TYPES or isinstance(result, grpc.aio.StreamUnaryCall):
            return result
        return _ResponseCall(result)

    return link


def streamed_link(
    intercept: Intercept, nxt: Continuation, base: type, owner: MeshCallBase
) -> Continuation:
    """As `unary_link` for streamed responses: an async iterable the interceptor returns
    becomes a call whose status is `owner`'s last real call's."""

    async def link(details: ClientCallDetails, request: Any) -> Any:
        result = await intercept(nxt, details, request)
        if type(result) in _fastpath.CALL_TYPES or isinstance(result, base | _StreamResponses):
            return result
        return _StreamResponses(result, owner)

    return link


def _direct(intercept: Intercept, nxt: Continuation) -> Continuation | None:
    """`nxt` wrapped in `intercept` with no link, when `intercept` is marked as always
    returning a call (interceptors._client.returns_call): one coroutine frame and
    one result check less per interceptor and call. None when it is not marked."""
    if getattr(intercept, RETURNS_CALL, False):
        return functools.partial(intercept, nxt)
    return None


def fold_chain(
    intercepts: Sequence[Intercept],
    terminal: Continuation,
    link: Callable[[Intercept, Continuation], Continuation],
) -> Continuation:
    """Fold interceptors (outermost first) around `terminal` into one continuation."""
    cont = terminal
    for intercept in reversed(intercepts):
        cont = _direct(intercept, cont) or link(intercept, cont)
    return cont


def fold_streamed_chain(
    intercepts: Sequence[Intercept],
    start: Callable[[ClientCallDetails, Any, MeshCallBase], Awaitable[Any]],
    base: type,
    owner: MeshCallBase,
) -> Continuation:
    """The chain of one streamed-response call (folded per call: its links need `owner`)."""

    async def terminal(details: ClientCallDetails, request: Any) -> Any:
        return await start(details, request, owner)

    cont: Continuation = terminal
    for intercept in reversed(intercepts):
        cont = _direct(intercept, cont) or streamed_link(intercept, cont, base, owner)
    return cont


async def UNSET_CHAIN(details: ClientCallDetails, request: Any) -> Any:
    """Placeholder of a call whose chain is set right after construction."""
    raise RuntimeError("call chain not set")  # pragma: no cover


# -- the call objects stubs return ----------------------------------------------------------


class MeshCallBase:
    """What every arity shares: start the chain once, then delegate to the resulting call."""

    __slots__ = (
        "_call",
        "_callbacks",
        "_cancelled",
        "_chain",
        "_details",
        "_error",
        "_last",
        "_request",
        "_running",
        "_waiter",
    )

    def __init__(self, chain: Continuation, details: ClientCallDetails, request: Any) -> None:
        self._chain = chain
        self._details = details
        self._request = request
        self._call: Any = None
        self._error: BaseException | None = None
        self._running = False
        self._waiter: asyncio.Future[None] | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] | None = None
        self._last: Any = None

    async def _resolve(self) -> Any:
        """Run the chain (once); the call it produced."""
        while self._running:  # another coroutine is running it: wait for its outcome
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        if self._call is not None:
            return self._call
        if self._error is not None:
            raise self._error
        if self._cancelled:
            self._error = asyncio.CancelledError()
            raise self._error
        self._running = True
        try:
            call = await self._chain(self._details, self._request)
        except BaseException as exc:
            self._error = exc
            self._fire_callbacks()
            raise
        finally:
            self._running = False
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._call = call
        if self._cancelled:
            call.cancel()
        if self._callbacks is not None:
            for cb in self._callbacks:
                call.add_done_callback(self._wrap(cb))
            self._callbacks = None
        return call

    def _wrap(self, callback: Callable[[Any], None]) -> Callable[[Any], None]:
        return lambda _call: callback(self)

    def _fire_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        for cb in callbacks or ():
            asyncio.get_running_loop().call_soon(cb, self)

    def _own_cancel(self) -> bool:
        """Whether a CancelledError from the real call is the caller's own doing."""
        task = asyncio.current_task()
        return self._cancelled or (task is not None and task.cancelling() > 0)

    def _cut(self) -> grpc.aio.AioRpcError:
        """What a CancelledError from the real call becomes when the caller did not cancel.

        grpc.aio raises CancelledError for any local cancellation; when neither
        the caller cancelled this call nor its task is being cancelled, the mesh
        cut it (its instance's channel closed: drain timeout, client closed), an
        RPC failure for the caller, raised as AioRpcError CANCELLED.
        """
        text = "call cut: its instance's channel was closed (drain timeout or client closed)"
        return grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, Metadata(), Metadata(), text, text)

    def _real(self) -> Any:
        call = self._call
        return call.real if isinstance(call, _StreamResponses) else call

    # grpc.aio.Call / RpcContext

    def cancel(self) -> bool:
        """Cancel the call. If the chain is still running (e.g. waiting for an
        instance), the call it starts is cancelled at once; cancelling the task
        that awaits the call stops the chain itself."""
        real = self._real()
        if real is not None:
            self._cancelled = True
            return bool(real.cancel())
        if self._error is not None or self._cancelled:
            return False
        self._cancelled = True
        return True

    def cancelled(self) -> bool:
        real = self._real()
        if real is not None:
            return bool(real.cancelled())
        return self._cancelled or isinstance(self._error, asyncio.CancelledError)

    def done(self) -> bool:
        real = self._real()
        if real is not None:
            return bool(real.done())
        return self._error is not None

    def time_remaining(self) -> float | None:
        real = self._real()
        if real is not None:
            remaining: float | None = real.time_remaining()
            return remaining
        return self._details.timeout

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        real = self._real()
        if real is not None:
            real.add_done_callback(self._wrap(callback))
        elif self._error is not None:
            asyncio.get_running_loop().call_soon(callback, self)
        else:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(callback)

    async def _settled(self) -> Any:
        """The real call, or None when the chain failed before one existed."""
        try:
            await self._resolve()
        except Exception:
            return None
        return self._real()

    async def initial_metadata(self) -> Metadata:
        real = await self._settled()
        return Metadata() if real is None else cast(Metadata, await real.initial_metadata())

    async def trailing_metadata(self) -> Metadata:
        real = await self._settled()
        if real is None:
            err = self._error
            if isinstance(err, grpc.aio.AioRpcError):
                return cast(Metadata, err.trailing_metadata())
            return Metadata()
        return cast(Metadata, await real.trailing_metadata())

    async def code(self) -> grpc.StatusCode:
        real = await self._settled()
        if real is None:
            assert self._error is not None
            return _error_code(self._error)
        return await real.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        real = await self._settled()
        if real is None:
            assert self._error is not None
            return _error_details(self._error)
        return await real.details()  # type: ignore[no-any-return]

    async def debug_error_string(self) -> str:
        real = await self._settled()
        if real is None:
            err = self._error
            if isinstance(err, grpc.aio.AioRpcError):
                return err.debug_error_string() or ""
            return ""
        return await real.debug_error_string()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        call = await self._resolve()
        real = call.real if isinstance(call, _StreamResponses) else call
        if real is not None:
            await real.wait_for_connection()


class _UnaryResponse(MeshCallBase):
    __slots__ = ()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        call = self._call
        if call is None:
            call = await self._resolve()
        try:
            return await call
        except asyncio.CancelledError:
            if self._own_cancel():
                raise
            raise self._cut() from None


class _StreamResponse(MeshCallBase):
    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        call = self._call
        if call is None:
            call = await self._resolve()
        try:
            async for response in call:
                yield response
        except asyncio.CancelledError:
            if self._own_cancel():
                raise
            raise self._cut() from None

    async def read(self) -> Any:
        call = self._call
        if call is None:
            call = await self._resolve()
        try:
            return await call.read()
        except asyncio.CancelledError:
            if self._own_cancel():
                raise
            raise self._cut() from None


class RequestQueue:
    """The request iterator behind write()/done_writing() (when a stub got no iterator)."""

    __slots__ = ("_queue",)
    _END: Final = object()

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._drain()

    async def _drain(self) -> AsyncIterator[Any]:
        while True:
            item = await self._queue.get()
            if item is RequestQueue._END:
                return
            yield item

    async def put(self, item: Any, call: Any) -> None:
        """Queue `item` unless `call` ends first (then InvalidStateError, never a hang)."""
        if self._queue.full():
            ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def finished(_call: Any) -> None:
                if not ended.done():
                    ended.set_result(None)

            call.add_done_callback(finished)
            put = asyncio.ensure_future(self._queue.put(item))
            await asyncio.wait((put, ended), return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
                raise asyncio.InvalidStateError("RPC already finished")
        else:
            self._queue.put_nowait(item)

    async def end(self, call: Any) -> None:
        await self.put(RequestQueue._END, call)


class _RequestStreaming(MeshCallBase):
    __slots__ = ()

    def _queue(self) -> RequestQueue:
        queue = self._request
        if not isinstance(queue, RequestQueue):
            raise grpc.aio.UsageError(
                "write()/done_writing() need the call to be made without a request iterator"
            )
        return queue

    async def write(self, request: Any) -> None:
        queue = self._queue()
        real = await self._started()
        if real is None or real.done():
            raise asyncio.InvalidStateError("RPC already finished")
        await queue.put(request, real)

    async def done_writing(self) -> None:
        queue = self._queue()
        real = await self._started()
        if real is not None and not real.done():
            with contextlib.suppress(asyncio.InvalidStateError):
                await queue.end(real)

    async def _started(self) -> Any:
        """The real call, starting the chain if needed (its errors propagate)."""
        if self._call is None:
            await self._resolve()
        return self._real()


class MeshUnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall):  # type: ignore[misc,type-arg]
    __slots__ = ()


class MeshUnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall):  # type: ignore[misc,type-arg]
    __slots__ = ()


class MeshStreamUnaryCall(  # type: ignore[misc]
    _UnaryResponse,
    _RequestStreaming,
    grpc.aio.StreamUnaryCall,  # type: ignore[type-arg]
):
    __slots__ = ()


class MeshStreamStreamCall(  # type: ignore[misc]
    _StreamResponse,
    _RequestStreaming,
    grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
):
    __slots__ = ()
