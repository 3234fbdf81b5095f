"""Unary RPC cost of the mesh client, side by side with a bare grpc.aio stub.

Run: `python -m bench.rpc [--seconds S] [--rounds R] [--levels 1,16,64]` (or
`python -m bench rpc`). One ping server runs in a child process; this process
is the client. For each number of calls in flight the modes take turns
(round-robin over `--rounds` rounds, so drift hits them alike):

  bare      grpc.aio.insecure_channel + generated stub
  mesh      mesh connect, full chain (deadline, retry, breaker, tracing, metrics),
            tracing sampled off
  mesh+tr   the same with every call traced (BatchSpanProcessor, exporter that
            drops the spans)

Printed: calls/s, p50/p99 latency, client CPU per call (time.process_time of
this process / calls: the server's share is not in it) and ratios to bare.
When the server process is the bottleneck the RPS ratio hides client cost;
CPU per call does not. Then the picker's cost per pick, and the chain's CPU
per call without gRPC or network (fake finished calls), as each interceptor
is added: what each one costs, precisely. `--network-breakdown` measures the
same over the network (noisier).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.balancer.picker import P2CPicker, RoundRobinPicker
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.runtime import MeshRuntime
from mesh.settings import Settings

Call = Callable[[ping_pb2.PingRequest], Awaitable[Any]]


# -- the server, in its own process ---------------------------------------------------------


def _serve(conn: Connection) -> None:
    async def main() -> None:
        from tests.support.ping import start_ping_server

        server = await start_ping_server("bench")
        conn.send(server.port)
        await server.server.wait_for_termination()

    asyncio.run(main())


def start_server() -> tuple[multiprocessing.process.BaseProcess, int]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    if not parent.poll(30):
        proc.kill()
        raise RuntimeError("the ping server did not start")
    return proc, int(parent.recv())


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Result:
    calls: int
    seconds: float
    cpu_s: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.calls * 1e6

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3


def merge(results: Sequence[Result]) -> Result:
    return Result(
        sum(r.calls for r in results),
        sum(r.seconds for r in results),
        sum(r.cpu_s for r in results),
        [x for r in results for x in r.latencies],
    )


async def drive(call: Call, inflight: int, seconds: float, warmup_s: float = 0.2) -> Result:
    """`inflight` closed-loop callers for `seconds`, after `warmup_s` not measured."""
    request = ping_pb2.PingRequest(value="bench")
    latencies: list[float] = []
    stop_at = 0.0
    clock = time.perf_counter

    async def caller() -> None:
        record = latencies.append
        while True:
            t = clock()
            if t >= stop_at:
                return
            await call(request)
            record(clock() - t)

    if warmup_s > 0:  # connections, caches, the server's first calls
        stop_at = clock() + warmup_s
        await asyncio.gather(*(caller() for _ in range(inflight)))
        latencies.clear()
    gc.collect()
    cpu0, t0 = time.process_time(), clock()
    stop_at = t0 + seconds
    await asyncio.gather(*(caller() for _ in range(inflight)))
    elapsed, cpu = clock() - t0, time.process_time() - cpu0
    return Result(len(latencies), elapsed, cpu, latencies)


class DropSpans(SpanExporter):
    """Exports nowhere: the cost measured is making and batching spans."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def tracer(sampled: bool) -> TracerProvider:
    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    if sampled:
        provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    return provider


async def mesh_runtime(port: int, provider: TracerProvider) -> MeshRuntime:
    settings = Settings(service="bench-client", registry="none")
    registry = StaticRegistry([Instance("bench-0", "ping", "127.0.0.1", port)])
    return await MeshRuntime.create(settings, registry=registry, tracer_provider=provider)


# -- picker ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Fake:
    inflight: int = 0


def pick_cost_us(n_endpoints: int, picks: int = 200_000) -> dict[str, float]:
    """Microseconds per pick (the loop's own cost subtracted)."""
    rng = random.Random(7)
    eps = [_Fake(rng.randrange(5)) for _ in range(n_endpoints)]
    out: dict[str, float] = {}
    for name, picker in (
        ("round_robin", RoundRobinPicker[_Fake](rng)),
        ("p2c", P2CPicker[_Fake](rng)),
    ):
        picker.update(eps)
        pick = picker.pick
        t = time.perf_counter()
        for _ in range(picks):
            pick()
        spent = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(picks):
            pass
        empty = time.perf_counter() - t
        out[name] = (spent - empty) / picks * 1e6
    return out


# -- the chain without a network ----------------------------------------------------------


class _Status:
    def code(self) -> int:
        return 0


class _CyCall:
    _status = _Status()


class _DoneCall:
    """A call that has already succeeded: what the chain costs, minus gRPC and the network."""

    _cython_call = _CyCall()
    _response = ping_pb2.PingResponse(value="x")

    def __await__(self) -> Any:
        return self._response
        yield

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()


class _FakeChannel:
    def __init__(self) -> None:
        self._forever = asyncio.Event()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, state: grpc.ChannelConnectivity) -> None:
        await self._forever.wait()

    def unary_unary(self, method: str, **kwargs: Any) -> Callable[..., _DoneCall]:
        done = _DoneCall()
        return lambda request, **kw: done

    async def close(self, grace: float | None = None) -> None:
        self._forever.set()


async def chain_costs(calls: int = 20_000) -> None:
    """Microseconds of CPU per call for the runner, then each interceptor added."""
    from mesh.balancer.pool import EndpointPool
    from mesh.channel import MeshChannel

    registry = StaticRegistry([Instance(f"fake-{i}", "ping", "127.0.0.1", 1 + i) for i in range(3)])
    rt = await mesh_runtime(1, tracer(False))
    rt_on = await mesh_runtime(1, tracer(True))
    full = rt.client_interceptors("ping")
    names = ["deadline", "retry", "breaker", "tracing(off)", "metrics"]
    steps: list[tuple[str, list[Any]]] = [("runner + pick", [])]
    steps += [(f"+ {name}", full[: i + 1]) for i, name in enumerate(names)]
    steps.append(("full, tracing on", rt_on.client_interceptors("ping")))
    print(f"\nchain CPU per call without gRPC/network (fake calls, {calls} calls, us):")
    previous = 0.0
    for label, chain in steps:
        pool = EndpointPool("ping", registry, lambda _i: _FakeChannel())  # type: ignore[arg-type,return-value]
        channel = MeshChannel(pool, chain)
        await asyncio.wait_for(channel.channel_ready(), 5)
        stub = ping_pb2_grpc.PingServiceStub(channel)
        request = ping_pb2.PingRequest()
        for _ in range(500):
            await stub.Ping(request)
        best = float("inf")
        for _ in range(3):
            cpu0 = time.process_time()
            for _ in range(calls // 3):
                await stub.Ping(request)
            best = min(best, (time.process_time() - cpu0) / (calls // 3) * 1e6)
        delta = "" if label.startswith("full") else f"({best - previous:+.1f})"
        print(f"  {label:<20} {best:6.1f} {delta}")
        if not label.startswith("full"):
            previous = best
        await channel.close()
    await rt.close()
    await rt_on.close()


# -- the run --------------------------------------------------------------------------------


async def compare(port: int, levels: Sequence[int], seconds: float, rounds: int) -> None:
    bare_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    bare = ping_pb2_grpc.PingServiceStub(bare_channel)
    rt_off = await mesh_runtime(port, tracer(False))
    rt_on = await mesh_runtime(port, tracer(True))
    mesh_off = await rt_off.connect("ping", ping_pb2_grpc.PingServiceStub)
    mesh_on = await rt_on.connect("ping", ping_pb2_grpc.PingServiceStub)
    modes: dict[str, Call] = {"bare": bare.Ping, "mesh": mesh_off.Ping, "mesh+tr": mesh_on.Ping}
    for stub in (bare, mesh_off, mesh_on):
        await stub.Ping(ping_pb2.PingRequest(), timeout=10)

    print(f"unary Ping, server in a child process; {rounds} x {seconds:.1f}s per mode and level")
    header = (
        f"{'inflight':>8} {'mode':<8} {'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'cpu us/call':>11} {'rps/bare':>8} {'cpu/bare':>8}"
    )
    print(header)
    print("-" * len(header))
    for level in levels:
        runs: dict[str, list[Result]] = {m: [] for m in modes}
        for i in range(rounds):
            for name, call in modes.items():
                warmup = 0.2 if i == 0 else 0.0
                runs[name].append(await drive(call, level, seconds / rounds, warmup))
        results = {name: merge(rs) for name, rs in runs.items()}
        base = results["bare"]
        for name, r in results.items():
            print(
                f"{level:>8} {name:<8} {r.rps:>9.0f} {r.pct(50):>7.2f} {r.pct(99):>7.2f}"
                f" {r.cpu_us:>11.0f} {r.rps / base.rps:>8.2f} {r.cpu_us / base.cpu_us:>8.2f}"
            )
    await bare_channel.close(None)
    await rt_off.close()
    await rt_on.close()


async def breakdown(port: int, seconds: float, level: int) -> None:
    """CPU per call as the chain grows by one interceptor at a time."""
    rt = await mesh_runtime(port, tracer(False))
    rt_on = await mesh_runtime(port, tracer(True))
    full = rt.client_interceptors("ping")
    traced = rt_on.client_interceptors("ping")
    names = ["deadline", "retry", "breaker", "tracing(off)", "metrics"]
    steps: list[tuple[str, list[Any]]] = [("runner+pick only", [])]
    steps += [(f"+ {name}", full[: i + 1]) for i, name in enumerate(names)]
    steps.append(("tracing sampled on", traced))
    bare_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    bare = ping_pb2_grpc.PingServiceStub(bare_channel)
    base = await drive(bare.Ping, level, seconds)
    print(f"\nclient CPU per call as the chain grows ({level} in flight, {seconds:.1f}s each)")
    print(f"  {'bare grpc.aio':<22} {base.cpu_us:>6.0f} us")
    previous = base.cpu_us
    for label, chain in steps:
        stub = await rt.connect("ping", ping_pb2_grpc.PingServiceStub, interceptors=chain)
        await stub.Ping(ping_pb2.PingRequest(), timeout=10)
        r = await drive(stub.Ping, level, seconds)
        if label == "tracing sampled on":
            print(
                f"  {label:<22} {r.cpu_us:>6.0f} us"
                f"  (full chain, +{r.cpu_us - base.cpu_us:.0f} vs bare)"
            )
        else:
            print(f"  {label:<22} {r.cpu_us:>6.0f} us  ({r.cpu_us - previous:+.0f})")
            previous = r.cpu_us
    await bare_channel.close(None)
    await rt.close()
    await rt_on.close()


async def main(levels: Sequence[int], seconds: float, rounds: int, network_breakdown: bool) -> None:
    proc, port = start_server()
    try:
        await compare(port, levels, seconds, rounds)
        costs = {n: pick_cost_us(n) for n in (3, 20)}
        print("\npicker cost per pick (us):")
        for n, c in costs.items():
            print(f"  {n:>2} instances: round_robin {c['round_robin']:.3f}, p2c {c['p2c']:.3f}")
        await chain_costs()
        if network_breakdown:
            await breakdown(port, max(1.0, seconds / 2), 16)
    finally:
        proc.kill()
        proc.join(5)


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench rpc",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per mode and level (all rounds)")
    p.add_argument("--rounds", type=int, default=6, help="turns each mode takes per level")
    p.add_argument("--levels", default="1,16,64", help="calls in flight, comma-separated")
    p.add_argument(
        "--network-breakdown",
        action="store_true",
        help="also measure CPU per call over the network as the chain grows (noisy)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    asyncio.run(main(levels, a.seconds, max(1, a.rounds), a.network_breakdown))


if __name__ == "__main__":
    cli()
