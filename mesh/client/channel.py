"""MeshChannel: a grpc.aio.Channel over every healthy instance of one service.

Generated stubs take it like any channel (`PingServiceStub(mesh_channel)`).
Each call runs the client interceptor chain in a lean runner of our own and,
innermost, picks an instance and starts the call on that instance's channel,
so a retry interceptor calling its continuation again re-picks.

Why not grpc.aio's own interceptor support: it starts one asyncio task per
call to run the interceptors and wraps every call in proxy objects; here the
chain runs inline in the task that awaits the call, and the continuations are
built once per method, not per call (unary-unary). Interceptors are ordinary
grpc.aio client interceptor objects with the same contract: a continuation
returns the (not yet finished) call; an interceptor returns a call, or a
response (unary responses) / an async iterable (streamed responses).

The call a stub returns (mesh/client/calls.py) starts its chain when first
awaited, iterated or asked for its status (not when created: there is no task
to run it). It is awaitable or async-iterable as its arity says and exposes
code(), details(), trailing_metadata()...; failures raise grpc.aio.AioRpcError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final

import grpc
from grpc.aio import ClientCallDetails, Metadata

from interceptors.traffic import TRACK_KEY, incoming_track
from mesh.balancer.endpoint import Endpoint
from mesh.balancer.pool import EndpointPool
from mesh.client.calls import (
    UNSET_CHAIN,
    Intercept,
    MeshCallBase,
    MeshStreamStreamCall,
    MeshStreamUnaryCall,
    MeshUnaryStreamCall,
    MeshUnaryUnaryCall,
    RequestQueue,
    fold_chain,
    fold_streamed_chain,
    stream_unary_link,
    unary_link,
)
from mesh.client.fused import fuse
from mesh.settings import RESILIENCE_DEFAULTS

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None


# The metadata key gRPC core reads a call's compression algorithm from
# (GRPC_COMPRESSION_REQUEST_ALGORITHM_MD_KEY in grpc/impl/compression_types.h),
# and the names it takes: what grpc.aio's own multicallables add.
COMPRESSION_KEY: Final = "grpc-internal-encoding-request"
_COMPRESSION_NAMES: Final = {
    grpc.Compression.NoCompression: "identity",
    grpc.Compression.Deflate: "deflate",
    grpc.Compression.Gzip: "gzip",
}


def _metadata(
    metadata: Any, compression: grpc.Compression | None
) -> Metadata:  # as grpc.aio's multicallables do, so interceptors see the same types
    md: Metadata = metadata or Metadata()
    if not isinstance(md, Metadata):
        md = Metadata.from_tuple(tuple(md))
    if compression:
        md = Metadata(*md, (COMPRESSION_KEY, _COMPRESSION_NAMES[compression]))
    return md


# -- multicallables -------------------------------------------------------------------------


class _MultiCallableBase:
    __slots__ = ("_deser", "_kind", "_mesh", "_method", "_ser")

    def __init__(self, mesh: MeshChannel, kind: str, method: str, ser: Any, deser: Any) -> None:
        self._mesh = mesh
        self._kind = kind
        self._method = method.encode()  # as grpc.aio gives it to interceptors
        self._ser = ser
        self._deser = deser

    async def _start(
        self, details: ClientCallDetails, request: Any, owner: MeshCallBase | None = None
    ) -> Any:
        """The innermost continuation: pick an instance, start the call there."""
        timeout = details.timeout
        metadata = details.metadata
        if type(metadata) is not Metadata:  # an interceptor of the user's may pass a tuple
            metadata = Metadata.from_tuple(tuple(metadata or ()))
        ep: Endpoint | None
        if TRACK_KEY in metadata or incoming_track.get() is not None:
            ep, timeout, metadata = await self._mesh._pick_track(metadata, timeout)
        else:
            ep = self._mesh.pool.pick()
            if ep is None:
                ep, timeout = await self._mesh._wait_for_endpoint(timeout)
        method = details.method
        mc = getattr(ep, self._kind).get(method)
        if mc is None:
            mc = ep.multicallable(self._kind, method, self._ser, self._deser)  # type: ignore[arg-type]
        call = mc(
            request,
            timeout=timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )
        ep.track(call)
        if owner is not None:
            owner._last = call
        return call


class MeshUnaryUnaryMultiCallable(_MultiCallableBase, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc,type-arg]
    __slots__ = ("_chain",)

    def __init__(self, mesh: MeshChannel, method: str, ser: Any, deser: Any) -> None:
        super().__init__(mesh, "uu", method, ser, deser)
        # Built once per method: a call allocates no continuations.
        self._chain = fold_chain(mesh._uu, self._start, unary_link)
        if mesh._fused is not None:
            self._chain = mesh._fused.bind(self._chain)

    def __call__(  # type: ignore[override]
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> MeshUnaryUnaryCall:
        details = ClientCallDetails(
            self._method,  # type: ignore[arg-type]
            timeout,
            _metadata(metadata, compression),
            credentials,
            wait_for_ready,
        )
        return MeshUnaryUnaryCall(self._chain, details, request)


class MeshStreamUnaryMultiCallable(_MultiCallableBase, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc,type-arg]
    __slots__ = ("_chain",)

    def __init__(self, mesh: MeshChannel, method: str, ser: Any, deser: Any) -> None:
        super().__init__(mesh, "su", method, ser, deser)
        self._chain = fold_chain(mesh._su, self._start, stream_unary_link)

    def __call__(  # type: ignore[override]
        self,
        request_iterator: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> MeshStreamUnaryCall:
        details = ClientCallDetails(
            self._method,  # type: ignore[arg-type]
            timeout,
            _metadata(metadata, compression),
            credentials,
            wait_for_ready,
        )
        requests = RequestQueue() if request_iterator is None else request_iterator
        return MeshStreamUnaryCall(self._chain, details, requests)


class _StreamedMultiCallable(_MultiCallableBase):
    """Streamed responses: the chain is folded per call (see fold_streamed_chain)."""

    __slots__ = ("_base", "_intercepts")
    _base: type
    _intercepts: Sequence[Intercept]


class MeshUnaryStreamMultiCallable(_StreamedMultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc,type-arg]
    __slots__ = ()

    def __init__(self, mesh: MeshChannel, method: str, ser: Any, deser: Any) -> None:
        super().__init__(mesh, "us", method, ser, deser)
        self._intercepts = mesh._us
        self._base = grpc.aio.UnaryStreamCall

    def __call__(  # type: ignore[override]
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> MeshUnaryStreamCall:
        details = ClientCallDetails(
            self._method,  # type: ignore[arg-type]
            timeout,
            _metadata(metadata, compression),
            credentials,
            wait_for_ready,
        )
        call = MeshUnaryStreamCall(UNSET_CHAIN, details, request)
        call._chain = fold_streamed_chain(self._intercepts, self._start, self._base, call)
        return call


class MeshStreamStreamMultiCallable(_StreamedMultiCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc,type-arg]
    __slots__ = ()

    def __init__(self, mesh: MeshChannel, method: str, ser: Any, deser: Any) -> None:
        super().__init__(mesh, "ss", method, ser, deser)
        self._intercepts = mesh._ss
        self._base = grpc.aio.StreamStreamCall

    def __call__(  # type: ignore[override]
        self,
        request_iterator: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> MeshStreamStreamCall:
        details = ClientCallDetails(
            self._method,  # type: ignore[arg-type]
            timeout,
            _metadata(metadata, compression),
            credentials,
            wait_for_ready,
        )
        requests = RequestQueue() if request_iterator is None else request_iterator
        call = MeshStreamStreamCall(UNSET_CHAIN, details, requests)
        call._chain = fold_streamed_chain(self._intercepts, self._start, self._base, call)
        return call


# -- the channel ----------------------------------------------------------------------------


class MeshChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A channel to every healthy instance of one service (see the module docstring).

    `interceptors` are grpc.aio client interceptor objects, outermost first; each
    takes part in the arities whose base class it subclasses.
    """

    def __init__(
        self,
        pool: EndpointPool,
        interceptors: Sequence[Any] = (),
        *,
        no_deadline_wait_s: float = RESILIENCE_DEFAULTS.default_deadline_s,
    ) -> None:
        self.pool = pool
        self.service = pool.service
        self.interceptors = tuple(interceptors)
        self._no_deadline_wait_s = no_deadline_wait_s
        ic = self.interceptors
        # The standard chain of unary-unary calls runs fused (mesh/client/fused.py).
        self._fused, fused_rest = fuse(ic)
        self._uu = [
            i.intercept_unary_unary
            for i in (fused_rest if self._fused is not None else ic)
            if isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)
        ]
        self._us = [
            i.intercept_unary_stream
            for i in ic
            if isinstance(i, grpc.aio.UnaryStreamClientInterceptor)
        ]
        self._su = [
            i.intercept_stream_unary
            for i in ic
            if isinstance(i, grpc.aio.StreamUnaryClientInterceptor)
        ]
        self._ss = [
            i.intercept_stream_stream
            for i in ic
            if isinstance(i, grpc.aio.StreamStreamClientInterceptor)
        ]
        self._closed = False
        pool.start()

    async def _pick_track(
        self, metadata: Metadata, call_timeout: float | None
    ) -> tuple[Endpoint, float | None, Metadata]:
        """The pick of a call with a track: the header override (`x-mesh-track`).

        In the call's own metadata, it is strict: only that subset's instances,
        UNAVAILABLE when the service has none. Propagated from the incoming call
        (interceptors.traffic.incoming_track), it is forwarded in the outgoing
        metadata and preferred: that subset when this service has it, the usual
        pick otherwise, so testing a green release of one service through the
        edge does not need a green instance of every service it calls.
        """
        explicit = metadata.get(TRACK_KEY)
        if explicit is not None:
            track = explicit if isinstance(explicit, str) else explicit.decode()
        else:
            track = incoming_track.get() or ""
            metadata = Metadata(*metadata, (TRACK_KEY, track))
            if not self.pool.has_track(track):
                ep = self.pool.pick()
                if ep is None:
                    ep, call_timeout = await self._wait_for_endpoint(call_timeout)
                return ep, call_timeout, metadata
        ep = self.pool.pick_track(track)
        if ep is None:
            ep, call_timeout = await self._wait_for_endpoint(call_timeout, track)
        return ep, call_timeout, metadata

    async def _wait_for_endpoint(
        self, call_timeout: float | None, track: str | None = None
    ) -> tuple[Endpoint, float | None]:
        """Wait (like wait_for_ready) for an instance, at most `no_instance_wait_s` and
        never past the call's deadline; the endpoint and the call's remaining timeout.

        The cap matters for long deadlines: a service with no instance at all should
        answer UNAVAILABLE promptly (so callers can compensate or retry elsewhere),
        not after the whole deadline of a call that was never going to be sent."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        wait = self._no_deadline_wait_s
        ep = await self.pool.wait_for_endpoint(
            wait if call_timeout is None else min(wait, call_timeout), track
        )
        if call_timeout is not None:
            call_timeout = max(call_timeout - (loop.time() - started), 0.001)
        return ep, call_timeout

    # grpc.aio.Channel

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> MeshUnaryUnaryMultiCallable:
        return MeshUnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> MeshUnaryStreamMultiCallable:
        return MeshUnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> MeshStreamUnaryMultiCallable:
        return MeshStreamUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> MeshStreamStreamMultiCallable:
        return MeshStreamStreamMultiCallable(
            self, method, request_serializer, response_deserializer
        )

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The best state among the instances (READY if any is)."""
        states = {ep.state for ep in self.pool.endpoints()}
        for state in (
            grpc.ChannelConnectivity.READY,
            grpc.ChannelConnectivity.CONNECTING,
            grpc.ChannelConnectivity.IDLE,
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        ):
            if state in states:
                return state
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        return grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state and not self._closed:
            await self.pool.wait_changed()

    async def channel_ready(self) -> None:
        """Wait until at least one instance is connected (bound it with asyncio.timeout)."""
        await self.pool.wait_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close every instance's channel; with `grace`, calls in flight first get up to
        `grace` seconds to finish (new calls fail UNAVAILABLE meanwhile)."""
        if self._closed:
            return
        self._closed = True
        await self.pool.close(grace)

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close(None)
