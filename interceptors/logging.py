"""One structured access-log line per server call.

The message is logfmt, readable as is:

    rpc method=/shop.orders.v2.OrderService/GetOrder code=OK duration_ms=1.84
        trace_id=4bf92f3577b34da6a3ce929d0e0e4736 peer=ipv4:127.0.0.1:50412

(one line; wrapped here)

and the same fields ride on the record (`rpc_method`, `rpc_code`,
`duration_ms`, `trace_id`, `peer`) for a JSON formatter. Never request or
response bodies, metadata or error messages (they may carry personal data or
secrets). INFO, or WARNING for server-side failures. The trace id is the
current span's: put the tracing interceptor outside this one. Health checks
are not logged by default (load balancers call them every few seconds).

Sampling (`sample_every=N`, the mesh's `MESH_ACCESS_LOG_EVERY`): a line costs
~16 µs of CPU (a stdlib record, formatted and written), more than the rest of
the server chain together, so with N > 1 only these calls get one:

- every call that did not end OK (any status code, not only server faults);
- every slow call (`slow_ms`, the mesh's `MESH_ACCESS_LOG_SLOW_MS`);
- one in N of the others (successful and fast), counted per interceptor; such
  a line carries `sample=N` (field `sample_every`): it stands for N calls, so
  counts from the log stay right (to within N).

A sampled trace does not force a line: with the default sampler
(parentbased_always_on) every call is traced, and its span already holds what
the line would (method, status, duration, peer).

N = 1 (the default here) logs every call, as before. Counts per method and
code are always complete in the metrics (`grpc_server_handled_total`).

Logger: `interceptors.logging` (the project's one naming scheme: every module
logs to `logging.getLogger(__name__)`), unless a logger is passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import grpc
from opentelemetry import trace

from interceptors._handler import ObservingServerInterceptor
from interceptors.plumbing import HEALTH_METHODS

_OK = grpc.StatusCode.OK
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


# (method, context, start): a tuple, the cheapest per-call record.
_Call = tuple[str, "grpc.aio.ServicerContext[Any, Any]", float]


class LoggingServerInterceptor(ObservingServerInterceptor[str | None, "_Call | None"]):
    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        ignore_methods: Iterable[str] = HEALTH_METHODS,
        sample_every: int = 1,
        slow_ms: float = 0.0,
    ) -> None:
        """`sample_every` N > 1: see the module docstring; `slow_ms` > 0: calls at least
        this long are always logged (0: only with N = 1, i.e. all of them)."""
        super().__init__()
        if sample_every < 1:
            raise ValueError("sample_every must be at least 1")
        self._log = logger or logging.getLogger(__name__)
        self._ignore = frozenset(ignore_methods)
        self.sample_every = sample_every
        self._slow_s = slow_ms / 1000 if slow_ms > 0 else float("inf")
        self._skipped = 0

    def prepare(self, method: str) -> str | None:
        return None if method in self._ignore else method

    def begin(
        self, prepared: str | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _Call | None:
        if prepared is None or not self._log.isEnabledFor(logging.WARNING):
            return None
        return prepared, context, time.perf_counter()

    def end(self, state: _Call | None, code: grpc.StatusCode, error: BaseException | None) -> None:
        if state is None:
            return
        method, context, start = state
        seconds = time.perf_counter() - start
        sample = 1
        if self.sample_every > 1 and code is _OK and seconds < self._slow_s:
            # A successful, fast call: one in N is logged, standing for N.
            self._skipped += 1
            if self._skipped < self.sample_every:
                return
            self._skipped = 0
            sample = self.sample_every
        level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        if not self._log.isEnabledFor(level):
            return
        duration_ms = round(seconds * 1000, 2)
        span_context = trace.get_current_span().get_span_context()
        trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else ""
        peer = context.peer() or ""
        extra: dict[str, Any] = {
            "rpc_method": method,
            "rpc_code": code.name,
            "duration_ms": duration_ms,
            "trace_id": trace_id,
            "peer": peer,
        }
        if sample > 1:
            extra["sample_every"] = sample
            self._log.log(
                level,
                "rpc method=%s code=%s duration_ms=%.2f trace_id=%s peer=%s sample=%d",
                method, code.name, duration_ms, trace_id or "-", peer or "-", sample,
                extra=extra,
            )  # fmt: skip
            return
        self._log.log(
            level,
            "rpc method=%s code=%s duration_ms=%.2f trace_id=%s peer=%s",
            method, code.name, duration_ms, trace_id or "-", peer or "-",
            extra=extra,
        )  # fmt: skip
