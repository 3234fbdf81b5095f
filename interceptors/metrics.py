"""Prometheus metrics for calls (RED, both sides) and for the mesh's resilience machinery.

`RpcMetrics` owns every metric object, registered in the `CollectorRegistry`
it is given (never the global default one: several runtimes may live in one
process, and tests need their own). Names:

| metric | labels |
|---|---|
| grpc_client_handled_total (counter) | service, grpc_service, grpc_method, grpc_code |
| grpc_client_handling_seconds (histogram) | service, grpc_service, grpc_method |
| grpc_server_handled_total (counter) | grpc_service, grpc_method, grpc_code |
| grpc_server_handling_seconds (histogram) | grpc_service, grpc_method |
| mesh_breaker_state (gauge: 0 closed, 1 half-open, 2 open) | service, method |
| mesh_breaker_transitions_total (counter) | service, method, from_state, to_state |
| mesh_client_retries_total (counter) | service, method, grpc_code |
| mesh_client_retries_throttled_total (counter: retry budget said no) | service, method |
| mesh_client_ejections_total (counter) | service, instance |

`service` is the mesh (registry) name of the called service, `method` a full
path `/pkg.Service/Method`; `grpc_service`/`grpc_method` split it like
go-grpc-prometheus so its dashboards apply. Each attempt of a retried call
is one handled call. Label children are resolved once per method and cached:
a call costs a counter increment and a histogram observe (see `RpcSeries`).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from interceptors import _fastpath
from interceptors._call import method_name, split_method, when_done
from interceptors._client import ClientInterceptor, Continuation, returns_call
from interceptors._handler import ObservingServerInterceptor

if TYPE_CHECKING:
    from interceptors.breaker import BreakerState

# Loopback calls take well under a millisecond: start the buckets there.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class RpcSeries:
    """The label children of one method: handled by code, and its latency histogram.

    `observe` runs for every call, so it updates the children's values the way
    `Counter.inc(1)` and `Histogram.observe(s)` do, without their checks (the
    children are labelled, amounts positive) and finding the bucket by bisection
    rather than a scan, when the fence (`interceptors/_fastpath.py`) allows the
    private read; through the public API otherwise. A code's counter child is
    still created on its first call.
    """

    __slots__ = ("_by_code", "_handled", "_labels", "_last", "_raw", "_seconds")

    def __init__(self, handled: Counter, seconds: Histogram, labels: tuple[str, ...]) -> None:
        self._handled = handled
        self._labels = labels
        self._seconds = seconds.labels(*labels)
        self._raw = _fastpath.histogram_raw(self._seconds)
        # code -> the increment of its counter child (see interceptors/_fastpath.py).
        self._by_code: dict[grpc.StatusCode, Callable[[float], None]] = {}
        self._last: tuple[grpc.StatusCode | None, Callable[[float], None] | None] = (None, None)

    def _inc_for(self, code: grpc.StatusCode) -> Callable[[float], None]:
        inc = self._by_code.get(code)
        if inc is None:
            child = self._handled.labels(*self._labels, code.name)
            inc = self._by_code[code] = _fastpath.counter_inc(child)
        self._last = (code, inc)
        return inc

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        last_code, inc = self._last
        if code is not last_code or inc is None:  # almost every call repeats the last code
            inc = self._inc_for(code)
        inc(1)
        raw = self._raw
        if raw is None:
            self._seconds.observe(seconds)
            return
        total, buckets, bounds = raw
        total(seconds)
        buckets[bisect_left(bounds, seconds)](1)


class RpcMetrics:
    def __init__(
        self, registry: CollectorRegistry, *, buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> None:
        self.registry = registry
        self.client_handled = Counter(
            "grpc_client_handled",
            "Client calls completed, by status code.",
            ["service", "grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.client_handling_seconds = Histogram(
            "grpc_client_handling_seconds",
            "Client call duration until its status was received.",
            ["service", "grpc_service", "grpc_method"],
            buckets=buckets,
            registry=registry,
        )
        self.server_handled = Counter(
            "grpc_server_handled",
            "Server calls completed, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.server_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Server call duration, handler start to finish.",
            ["grpc_service", "grpc_method"],
            buckets=buckets,
            registry=registry,
        )
        self.breaker_state = Gauge(
            "mesh_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["service", "method"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "mesh_breaker_transitions",
            "Circuit breaker state changes.",
            ["service", "method", "from_state", "to_state"],
            registry=registry,
        )
        self.client_retries = Counter(
            "mesh_client_retries",
            "Retries made, by the status code that caused them.",
            ["service", "method", "grpc_code"],
            registry=registry,
        )
        self.client_retries_throttled = Counter(
            "mesh_client_retries_throttled",
            "Retries not made because the retry budget was spent.",
            ["service", "method"],
            registry=registry,
        )
        self.server_denied = Counter(
            "mesh_server_denied",
            "Calls refused by the caller policy before any handler ran.",
            ["grpc_service", "grpc_method", "caller", "grpc_code"],
            registry=registry,
        )
        self.client_ejections = Counter(
            "mesh_client_ejections",
            "Instances ejected by outlier detection.",
            ["service", "instance"],
            registry=registry,
        )

    def client_series(self, service: str, full_method: str) -> RpcSeries:
        grpc_service, grpc_method = split_method(full_method)
        return RpcSeries(
            self.client_handled,
            self.client_handling_seconds,
            (service, grpc_service, grpc_method),
        )

    def server_series(self, full_method: str) -> RpcSeries:
        return RpcSeries(
            self.server_handled, self.server_handling_seconds, split_method(full_method)
        )

    def on_breaker_change(
        self, service: str, method: str, old: BreakerState | None, new: BreakerState
    ) -> None:
        """A `BreakerSet` `on_change` callback: gauge to the new state, count the transition."""
        self.breaker_state.labels(service, method).set(int(new))
        if old is not None:
            self.breaker_transitions.labels(
                service, method, old.name.lower(), new.name.lower()
            ).inc()

    def record_retry(self, service: str, method: str, code: grpc.StatusCode) -> None:
        self.client_retries.labels(service, method, code.name).inc()

    def record_retry_throttled(self, service: str, method: str) -> None:
        self.client_retries_throttled.labels(service, method).inc()

    def record_denial(self, full_method: str, caller: str, code: grpc.StatusCode) -> None:
        """An `on_denied` callback of the caller-policy interceptor."""
        self.server_denied.labels(*split_method(full_method), caller, code.name).inc()

    def record_ejection(self, service: str, instance: str) -> None:
        self.client_ejections.labels(service, instance).inc()


class MetricsClientInterceptor(ClientInterceptor):
    """Counts and times every call (each attempt, when inside the retry interceptor)."""

    def __init__(self, metrics: RpcMetrics, service: str) -> None:
        self._metrics = metrics
        self._service = service
        # Keyed by details.method as given (bytes from grpc.aio): no decoding per call.
        self._series: dict[Any, RpcSeries] = {}

    def series(self, details: grpc.aio.ClientCallDetails) -> RpcSeries:
        """The method's series (shared with the mesh's fused client chain)."""
        series = self._series.get(details.method)
        if series is None:
            series = self._series[details.method] = self._metrics.client_series(
                self._service, method_name(details)
            )
        return series

    @returns_call
    async def intercept(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = client_call_details
        series = self.series(details)
        start = time.perf_counter()
        try:
            call = await continuation(details, request)
        except grpc.aio.AioRpcError as err:
            series.observe(err.code(), time.perf_counter() - start)
            raise
        when_done(call, lambda code, _details: series.observe(code, time.perf_counter() - start))
        return call

    intercept_unary_unary = intercept_unary_stream = intercept
    # grpc passes arguments positionally: `request` stands for `request_iterator` too.
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]


class MetricsServerInterceptor(ObservingServerInterceptor[RpcSeries, tuple[RpcSeries, float]]):
    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def prepare(self, method: str) -> RpcSeries:
        return self._metrics.server_series(method)

    def begin(
        self, prepared: RpcSeries, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[RpcSeries, float]:
        return prepared, time.perf_counter()

    def end(
        self, state: tuple[RpcSeries, float], code: grpc.StatusCode, error: BaseException | None
    ) -> None:
        series, start = state
        series.observe(code, time.perf_counter() - start)
