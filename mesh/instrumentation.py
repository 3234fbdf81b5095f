"""Tracing for plain grpc.aio channels and servers built outside the mesh.

The mesh traces its own calls with its interceptor chain (`interceptors/
tracing.py`, with its sampler and metrics on the hot path; the official
instrumentation alone measured 0.6-0.78x throughput here). Code that builds plain
`grpc.aio` objects, a script calling the edge with the generated stubs, a
third-party server beside a mesh service, gets OpenTelemetry's own grpc
instrumentation (`opentelemetry-instrumentation-grpc`) through this module,
so its spans join the same traces (W3C `traceparent` both ways):

- `client_interceptors()` / `server_interceptor()`: pass them to the channel
  or server you build; nothing global changes. Use these inside a mesh process.
- `instrument()`: patch `grpc.aio.insecure_channel`, `secure_channel` and
  `server` (the instrumentors' way), so channels and servers built *after*
  the call are traced without touching the code that builds them; returns a
  function that undoes it. Limits: objects built before the call are not
  traced (the patch is on the constructors), the sync `grpc` API is not
  covered, and in a mesh process the mesh's own channels and servers would
  then be traced twice (their spans plus OpenTelemetry's), so call it only in
  processes that are not mesh services.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import (
    GrpcAioInstrumentorClient,
    GrpcAioInstrumentorServer,
    aio_client_interceptors,
    aio_server_interceptor,
)
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.trace import TracerProvider

# The instrumentation package ships a py.typed marker but leaves these factories
# unannotated: the `no-untyped-call` ignores below are about that, nothing else.


def client_interceptors(
    tracer_provider: TracerProvider | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """One client interceptor per call arity, for `grpc.aio.*_channel(interceptors=...)`."""
    return list(aio_client_interceptors(tracer_provider=tracer_provider))  # type: ignore[no-untyped-call]


def server_interceptor(
    tracer_provider: TracerProvider | None = None,
) -> grpc.aio.ServerInterceptor[Any, Any]:
    """The server interceptor, for `grpc.aio.server(interceptors=[...])` (put it first)."""
    interceptor: grpc.aio.ServerInterceptor[Any, Any] = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider
    )
    return interceptor


def instrument(
    tracer_provider: TracerProvider | None = None, *, client: bool = True, server: bool = True
) -> Callable[[], None]:
    """Trace every grpc.aio channel (`client`) and server (`server`) built from now on.

    `tracer_provider` defaults to the global one. Returns `uninstrument`.
    Instrumenting twice without undoing is a no-op (the instrumentors are
    process-wide singletons).
    """
    instrumentors: list[BaseInstrumentor] = []
    if client:
        instrumentors.append(GrpcAioInstrumentorClient())  # type: ignore[no-untyped-call]
    if server:
        instrumentors.append(GrpcAioInstrumentorServer())  # type: ignore[no-untyped-call]
    for one in instrumentors:
        one.instrument(tracer_provider=tracer_provider)

    def uninstrument() -> None:
        for one in instrumentors:
            one.uninstrument()

    return uninstrument
