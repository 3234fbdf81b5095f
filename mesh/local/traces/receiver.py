"""The OTLP/gRPC trace receiver of the local sink, and its process entry point.

`python -m mesh.local.traces --db PATH --port N` listens on 127.0.0.1 only
(plaintext: loopback, the same machine's services and Envoy) and writes every
exported span to the SQLite store. It runs as its own supervised process, not
in `meshctl up`: a gRPC server in the supervisor would make forking its other
children unsafe, and its CPU stays apart from the edge's meta server.

It takes spans from the account that runs it only: every account on the machine
reaches 127.0.0.1, and another's spans would show in the dashboard as the mesh's.
Each export's peer is looked up in the kernel's socket table
(`mesh.local.peer_account`, Linux) and another uid is answered PERMISSION_DENIED.

Only traces: the exporters of metrics and logs are not pointed here. A batch
that cannot be stored (disk full, a locked file) is answered UNAVAILABLE, so
the exporter retries it and nothing is lost silently.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from interceptors.plumbing import HEALTH_PREFIX
from mesh.local import peer_account
from mesh.local.traces.store import DEFAULT_MAX_AGE_S, DEFAULT_MAX_SPANS, SpanRow, SpanWriter

log = logging.getLogger(__name__)

# Roots that are probes, not requests: every instance is health-checked every few
# seconds (Envoy, the registry), and kept they would bury the shop's traces. The
# mesh's own servers no longer start them (interceptors/plumbing.py); this keeps
# other exporters' (an older mesh, another SDK) out too.
NOISE_ROOTS = (HEALTH_PREFIX.lstrip("/"),)


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return None if kind is None else getattr(v, kind)


def _attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def span_rows(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SpanRow]:
    """The spans of one export request, with their resource's `service.name`, less
    health-check roots (`NOISE_ROOTS`)."""
    rows = []
    for rs in request.resource_spans:
        service = str(_attributes(rs.resource.attributes).get("service.name", "unknown"))
        for ss in rs.scope_spans:
            for s in ss.spans:
                if not s.parent_span_id and s.name.startswith(NOISE_ROOTS):
                    continue
                error = s.status.code == trace_pb2.Status.STATUS_CODE_ERROR
                rows.append(
                    SpanRow(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        service=service,
                        name=s.name,
                        kind=int(s.kind),
                        start_ns=int(s.start_time_unix_nano),
                        end_ns=int(s.end_time_unix_nano),
                        error=error,
                        status=s.status.message if error else "",
                        attributes=_attributes(s.attributes),
                    )
                )
    return rows


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, writer: SpanWriter) -> None:
        self.writer = writer
        self.port = 0  # where it listens, once bound: the other end of its peers' sockets
        self.owner_uid = peer_account.served_account()  # None: any, where it cannot tell
        if self.owner_uid is None:
            log.warning(
                "the trace sink cannot tell which account connects on this system (no Linux"
                " sock_diag): every account on this machine can send it spans"
            )

    def _foreign(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        if self.owner_uid is None:
            return False
        kind, _, address = context.peer().partition(":")
        host, _, port = address.rpartition(":")
        if kind != "ipv4" or not port.isdigit():
            return True  # the sink listens on 127.0.0.1 only: anything else is not ours
        uid = peer_account.peer_uid((host, int(port)), ("127.0.0.1", self.port))
        return uid != self.owner_uid

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self._foreign(context):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this trace sink takes spans from the account that runs the mesh only",
            )
        try:
            self.writer.add(span_rows(request))
        except sqlite3.Error as exc:
            log.warning("could not store %d span batch: %s", len(request.resource_spans), exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"trace store: {exc}")
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(writer: SpanWriter, port: int, stop: asyncio.Event) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    receiver = TraceReceiver(writer)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server
    )
    bound = receiver.port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"trace sink listening on 127.0.0.1:{bound}, storing in {writer.path}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mesh.local.traces", description=__doc__)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--port", type=int, default=4317)
    p.add_argument("--max-spans", type=int, default=DEFAULT_MAX_SPANS)
    p.add_argument("--max-age-s", type=float, default=DEFAULT_MAX_AGE_S)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    writer = SpanWriter(args.db, max_spans=args.max_spans, max_age_s=args.max_age_s)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(writer, args.port, stop)

    try:
        asyncio.run(run())
    finally:
        writer.close()
    return 0
