"""The whole mesh, both sides, with mTLS: against bare gRPC and against a sidecar mesh.

Run: `python -m bench whole [--seconds S] [--rounds R] [--levels 1,16,64]`.
Ping servers run in child processes, the Envoys as their own processes; this
process is the client. For each number of calls in flight the modes take
turns (round-robin, so drift and the box's other load hit them alike):

  direct    bare grpc.aio client → bare grpc.aio server, mutual TLS
  carried   the same bare pair, the client sending what any mesh's call carries: a
            deadline (`timeout=`) and a fresh sampled W3C `traceparent` per call. Its
            ratio to `direct` is the floor of `both_ratio`: what propagating deadlines
            and trace context costs in gRPC itself (HPACK, a timer per call, the
            server's parse), before any interceptor runs
  mesh      `MeshRuntime.connect` client (full chain) → the mesh server chain
            (fused, caller policy) — mTLS, default sampling (parentbased_always_on:
            every call traced; spans batched to an exporter that drops them)
  sidecar   bare client → client-side Envoy → (mTLS) → server-side Envoy → bare
            server (bench/sidecar.py: stats, tracing at 100 %, retries)

The mesh server child and this process (the client of every mode) set Python's
garbage collector as `run_service` does (`mesh/gc_tuning.py`, `MESH_GC_GEN0_THRESHOLD`).

Printed per level: calls/s, p50/p99, client CPU per call, "server" CPU per call
(the server process; for sidecar also both Envoys'), ratios to `direct`; then
the headline ratios: mesh vs direct (RPS, p99), carried vs direct (the floor) and
mesh vs sidecar (RPS).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc.aio import Metadata
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, TraceFlags
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from base.settings import default_of
from bench import sidecar
from bench.rpc import (
    Call,
    DropSpans,
    Result,
    Server,
    _print_header,
    _tls_channel,
    _turns,
    gc_as_services,
    mesh_runtime,
    start_server,
)
from interceptors.tracing import format_traceparent, make_tracer_provider
from mesh.security.identity import MeshIdentity
from mesh.security.store import PkiStore
from mesh.settings import ResilienceSettings, SecuritySettings

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class _WithEnvoys:
    """A Server whose CPU reading includes the Envoys' (for the sidecar mode)."""

    server: Server
    envoys: Sequence[sidecar.Envoy]

    def cpu(self) -> float:
        return self.server.cpu() + sum(_proc_cpu(e.proc.pid) for e in self.envoys)


@dataclass
class WholeResult:
    results: dict[int, dict[str, Result]]

    def ratio(self, mode: str, base: str, level: int) -> float:
        return self.results[level][mode].rps / self.results[level][base].rps

    def p99_ratio(self, mode: str, base: str, level: int) -> float:
        return self.results[level][mode].pct(99) / self.results[level][base].pct(99)


# What `carried` sends: a mesh call's default deadline and a sampled traceparent.
CARRIED_TIMEOUT_S: float = default_of(ResilienceSettings, "default_deadline_s")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _carrying(call: Any) -> Call:
    """`call` (a bare stub's method) with a deadline and a new trace context per call,
    as a mesh client sends them (the SDK's id generator, the mesh's formatting)."""
    ids = RandomIdGenerator()

    def carried(request: Any) -> Any:
        context = SpanContext(
            ids.generate_trace_id(), ids.generate_span_id(), False, trace_flags=_SAMPLED
        )
        metadata = Metadata(("traceparent", format_traceparent(context)))
        return call(request, timeout=CARRIED_TIMEOUT_S, metadata=metadata)

    return carried


def _client_provider() -> Any:
    provider = make_tracer_provider("bench-client", {})  # the default: parentbased_always_on
    provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    return provider


async def run(
    levels: Sequence[int], seconds: float, rounds: int, *, sidecars: bool = True
) -> WholeResult:
    with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
        work = Path(tmp)
        security = SecuritySettings(pki_dir=str(work / "pki"))
        store = PkiStore(security)
        store.init_ca()
        client_id = MeshIdentity.load("bench-client", security)
        servers: list[Server] = []
        envoys: list[sidecar.Envoy] = []
        channels: list[grpc.aio.Channel] = []
        runtime = None
        try:
            direct_server = start_server(pki_dir=security.pki_dir)
            mesh_server = start_server(chain=True, pki_dir=security.pki_dir)
            servers += [direct_server, mesh_server]
            channels.append(_tls_channel(direct_server.port, client_id))
            direct = ping_pb2_grpc.PingServiceStub(channels[-1])
            runtime = await mesh_runtime(mesh_server.port, _client_provider(), security)
            mesh = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
            modes: dict[str, tuple[Call, Any]] = {
                "direct": (direct.Ping, direct_server),
                "carried": (_carrying(direct.Ping), direct_server),
                "mesh": (mesh.Ping, mesh_server),
            }
            if sidecars:
                app = start_server()
                servers.append(app)
                store.issue("sidecar-client")
                store.issue("sidecar-server")
                pki = sidecar.SidecarPki(
                    store.ca_cert_path,
                    store.cert_path("sidecar-client"),
                    store.key_path("sidecar-client"),
                    store.cert_path("sidecar-server"),
                    store.key_path("sidecar-server"),
                    f"spiffe://{store.trust_domain}/svc/sidecar-server",
                )
                inbound, outbound = sidecar.free_port(), sidecar.free_port()
                envoys.append(
                    sidecar.start_envoy(
                        sidecar.server_sidecar(inbound, sidecar.free_port(), app.port, pki),
                        work, "server-sidecar", inbound,
                    )
                )  # fmt: skip
                envoys.append(
                    sidecar.start_envoy(
                        sidecar.client_sidecar(outbound, sidecar.free_port(), inbound, pki),
                        work, "client-sidecar", outbound,
                    )
                )  # fmt: skip
                channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{outbound}"))
                via = ping_pb2_grpc.PingServiceStub(channels[-1])
                modes["sidecar"] = (via.Ping, _WithEnvoys(app, envoys))
            for call, _ in modes.values():
                await asyncio.wait_for(call(ping_pb2.PingRequest()), 10)
            _print_header(
                f"\nboth sides, mTLS: direct (bare client+server), carried (bare, with a deadline"
                f" and a traceparent), mesh, sidecar pair; {rounds}"
                f" x {seconds / rounds:.1f}s turns (server us: sidecar includes both Envoys)"
            )
            # This process is the client of every mode; tuned as run_service tunes a
            # service's process (the mesh server child is too), which helps `direct` alike.
            with gc_as_services():
                results = await _turns(
                    modes, levels, seconds, rounds, lambda r: r.cpu_us + r.server_cpu_us
                )
            out = WholeResult(results)
            print("\nmesh vs direct (RPS, p99) and mesh vs sidecar (RPS, p50, p99):")
            for level in levels:
                line = (
                    f"  {level:>3} in flight: mesh/direct {out.ratio('mesh', 'direct', level):.2f}"
                    f", p99 {out.p99_ratio('mesh', 'direct', level):.2f}x"
                    f"; carried/direct {out.ratio('carried', 'direct', level):.2f} (the floor)"
                )
                if sidecars:
                    sc = results[level]["sidecar"]
                    line += (
                        f"; mesh/sidecar {out.ratio('mesh', 'sidecar', level):.2f}"
                        f" (sidecar p50 {sc.pct(50):.2f} ms p99 {sc.pct(99):.2f} ms)"
                    )
                print(line)
            return out
        finally:
            for ch in channels:
                await ch.close(None)
            if runtime is not None:
                await runtime.close()
            for envoy in envoys:
                envoy.stop()
            for server in servers:
                server.stop()


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench whole",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per mode and level (all rounds)")
    p.add_argument("--rounds", type=int, default=6, help="turns each mode takes per level")
    p.add_argument("--levels", default="1,16,64", help="calls in flight, comma-separated")
    p.add_argument("--no-sidecar", action="store_true", help="without the Envoy pair")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    asyncio.run(run(levels, a.seconds, max(1, a.rounds), sidecars=not a.no_sidecar))


if __name__ == "__main__":
    cli()
