"""The cost of `meshctl up`'s local trace export, side by side on the mesh client.

Run: `python -m bench traces [--seconds S] [--rounds R] [--levels 1,16,64]`.
A bare ping server runs in a child process and the local trace sink
(`python -m mesh.local.traces`, OTLP/gRPC into SQLite) in another, as
`meshctl up` runs it; this process is the mesh client. Modes, taking turns:

  mesh       the mesh client chain, tracing sampled off (reference)
  mesh+rec   the default sampler (parentbased_always_on: every call is a root,
             so every call is sampled) and no exporter: a service outside
             `meshctl up` (OTEL_TRACES_EXPORTER unset)
  mesh+sink  the same, exported to the local sink as `meshctl up` configures
             its services (OTLP, batch every 500 ms)

Printed as `bench.rpc` prints (ratios to `mesh`), then the ratio the README
quotes: mesh+sink against mesh+rec, i.e. what exporting adds to recording
spans, in calls/s and client CPU per call; and the sink's own CPU per span
(it shares the machine's cores). One client span per call; a hop inside the
mesh makes two (client and server), each process exporting its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from bench.rpc import Call, Result, Server, drive, merge, mesh_runtime, start_server, tracer
from interceptors.tracing import make_tracer_provider
from mesh.local.observe import ObserveOptions, pick_port
from mesh.local.traces.store import DB_NAME, connect


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_sink(work: Path) -> tuple[subprocess.Popen[str], int]:
    port = pick_port(0)
    sink = subprocess.Popen(
        [sys.executable, "-m", "mesh.local.traces", "--db", str(work / DB_NAME),
         "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sink.stdout is not None
    if "listening" not in sink.stdout.readline():
        sink.kill()
        raise RuntimeError("the trace sink did not start")
    return sink, port


async def run(levels: Sequence[int], seconds: float, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-traces-"))
    sink, port = _start_sink(work)
    server: Server = start_server()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": str(ObserveOptions().export_delay_ms),
    }
    runtimes = {
        "mesh": await mesh_runtime(server.port, tracer(False)),
        "mesh+rec": await mesh_runtime(server.port, make_tracer_provider("bench", {})),
        "mesh+sink": await mesh_runtime(server.port, make_tracer_provider("bench", env)),
    }
    calls: dict[str, Call] = {}
    for name, rt in runtimes.items():
        stub = await rt.connect("ping", ping_pb2_grpc.PingServiceStub)
        await stub.Ping(ping_pb2.PingRequest(), timeout=10)
        calls[name] = stub.Ping
    print(
        f"mesh client, unary Ping to a bare server; {rounds} x {seconds / rounds:.1f}s turns"
        " per mode and level"
    )
    header = (
        f"{'inflight':>8} {'mode':<9} {'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'client us':>9} {'rps/mesh':>8} {'cpu/mesh':>8}"
    )
    print(header)
    print("-" * len(header))
    sink_cpu = 0.0
    try:
        for level in levels:
            runs: dict[str, list[Result]] = {m: [] for m in calls}
            for i in range(rounds):
                for name, call in calls.items():
                    before = _cpu_s(sink.pid)
                    r = await drive(call, level, seconds / rounds, 0.2 if i == 0 else 0.0, server)
                    if name == "mesh+sink":
                        sink_cpu += _cpu_s(sink.pid) - before
                    runs[name].append(r)
            res = {n: merge(rs) for n, rs in runs.items()}
            base = res["mesh"]
            for name, r in res.items():
                print(
                    f"{level:>8} {name:<9} {r.rps:>9.0f} {r.pct(50):>7.2f} {r.pct(99):>7.2f}"
                    f" {r.cpu_us:>9.0f} {r.rps / base.rps:>8.2f} {r.cpu_us / base.cpu_us:>8.2f}"
                )
            rec, exp = res["mesh+rec"], res["mesh+sink"]
            print(
                f"{'':>8} export/record: calls/s x{exp.rps / rec.rps:.2f},"
                f" client CPU per call x{exp.cpu_us / rec.cpu_us:.2f}"
            )
        # Returns once the last batch is exported: the sink stores a batch before answering.
        runtimes["mesh+sink"].tracer_provider.force_flush(10_000)
        conn = connect(work / DB_NAME, readonly=True)
        (spans,) = conn.execute("SELECT count(*) FROM spans").fetchone()
        conn.close()
        if spans:
            print(f"sink: {spans} spans stored, {sink_cpu / spans * 1e6:.0f} us CPU per span")
    finally:
        for rt in runtimes.values():
            await rt.close()
        server.stop()
        sink.terminate()
        sink.wait(10)


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench traces",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per mode and level (all rounds)")
    p.add_argument("--rounds", type=int, default=6, help="turns each mode takes per level")
    p.add_argument("--levels", default="1,16", help="calls in flight, comma-separated")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    asyncio.run(run(levels, a.seconds, max(1, a.rounds)))


if __name__ == "__main__":
    cli()
