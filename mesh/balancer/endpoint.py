"""One instance as the client sees it: its own channel, calls in flight, health.

Each endpoint owns one `grpc.aio` channel created with
`grpc.use_local_subchannel_pool`, so every instance gets its own HTTP/2
connection (gRPC would otherwise share one subchannel between channels with
identical options) and load spreads by instance, not by connection reuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc

from interceptors import _fastpath
from interceptors._call import when_done
from mesh.balancer.outlier import OutlierConfig, OutlierTracker
from mesh.discovery.registry import Instance

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Results that say nothing about the instance's health: the caller gave up.
_NEUTRAL = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED})

MultiCallable = Callable[..., Any]
_FACTORIES = {
    "uu": "unary_unary",
    "us": "unary_stream",
    "su": "stream_unary",
    "ss": "stream_stream",
}


class EndpointListener(Protocol):
    """The pool, as the endpoint reports to it."""

    def endpoint_succeeded(self, endpoint: Endpoint) -> None: ...

    def endpoint_failed(self, endpoint: Endpoint) -> None: ...

    def endpoint_drained(self, endpoint: Endpoint) -> None: ...


class Endpoint:
    """An instance, its channel and the numbers the picker and ejection need."""

    __slots__ = (
        "__weakref__",
        "_done",
        "_listener",
        "address",
        "channel",
        "draining",
        "inflight",
        "instance",
        "outlier",
        "ss",
        "state",
        "su",
        "us",
        "uu",
    )

    def __init__(
        self,
        instance: Instance,
        channel: grpc.aio.Channel,
        outlier: OutlierConfig,
        listener: EndpointListener,
    ) -> None:
        self.instance = instance
        self.address = instance.address
        self.channel = channel
        self.inflight = 0
        self.state = grpc.ChannelConnectivity.IDLE
        self.outlier = OutlierTracker(outlier)
        self.draining = False
        self._listener = listener
        # Bound once: a done callback per call must not allocate a bound method each time.
        self._done = self._call_done
        # Multicallables of this instance's channel per method, one dict per arity.
        self.uu: dict[bytes, MultiCallable] = {}
        self.us: dict[bytes, MultiCallable] = {}
        self.su: dict[bytes, MultiCallable] = {}
        self.ss: dict[bytes, MultiCallable] = {}

    def __repr__(self) -> str:
        return (
            f"Endpoint({self.instance.id}@{self.address}, {self.state.name}, "
            f"inflight={self.inflight}, ejected={self.outlier.ejected})"
        )

    def multicallable(self, kind: str, method: bytes, ser: Any, deser: Any) -> MultiCallable:
        """The channel's multicallable for `method` (kind: uu | us | su | ss), cached."""
        cache: dict[bytes, MultiCallable] = getattr(self, kind)
        mc = cache.get(method)
        if mc is None:
            factory = getattr(self.channel, _FACTORIES[kind])
            mc = cache[method] = factory(
                method.decode(),
                request_serializer=ser,
                response_deserializer=deser,
                **_fastpath.MULTICALLABLE_OPTIONS,
            )
        return mc

    def track(self, call: Any) -> None:
        """Count `call` in flight until it finishes, then report its outcome.

        The outcome comes through `when_done`, which the call's observing
        interceptors share: one done callback and one status read per call.
        """
        self.inflight += 1
        when_done(call, self._done)

    def _call_done(self, code: grpc.StatusCode, _details: str) -> None:
        self.inflight -= 1
        if code is _UNAVAILABLE:
            self._listener.endpoint_failed(self)
        elif code not in _NEUTRAL and not self.outlier.clean:
            # OK, or any answer from the instance (NOT_FOUND...): it is alive.
            self._listener.endpoint_succeeded(self)
        if self.draining and self.inflight == 0:
            self._listener.endpoint_drained(self)
