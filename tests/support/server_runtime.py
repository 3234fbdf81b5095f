"""A stand-in for `MeshRuntime` where a test starts a server without one.

`mesh.server.server_interceptors` and `start_service` read only these four
attributes of a runtime: no registry (nothing registers), the Prometheus registry,
the RPC metrics in it (or None: no metrics interceptor) and the tracer provider
(or None: no tracing).
"""

from __future__ import annotations

import dataclasses

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from interceptors.metrics import RpcMetrics


@dataclasses.dataclass
class StubRuntime:
    tracer_provider: TracerProvider | None = None
    with_metrics: bool = True
    prometheus: CollectorRegistry = dataclasses.field(default_factory=CollectorRegistry)
    registry: None = None
    metrics: RpcMetrics | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.with_metrics:
            self.metrics = RpcMetrics(self.prometheus)
