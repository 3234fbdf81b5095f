"""How the mesh's cost grows: with the payload, with a stream, with the number of instances.

Run: `python -m bench growth [--seconds S] [--rounds R] [--inflight N] [--instances 3,30,300]`.

1. Payloads and streams, mesh vs bare, both sides with mTLS (the modes of
   `bench.whole`: `direct` bare client → bare server, `mesh` connect client →
   mesh server chain, default sampling): unary Ping with a 100 B, 10 KB and
   1 MB request echoed back, and a server-streaming PingList of 1,000
   messages (calls/s = streams/s), taking turns, at `--inflight` calls in flight
   (1 MB and streams: one at a time).
2. Picking: the balancer's pickers (round robin, P2C) with 3, 30, 300 endpoints.
3. Watching, embedded registry (`mesh.discovery.embedded`, the default): with N
   instances registered (lease-only, no health probes), the CPU of one watcher
   poll (`stat` of the directory + one per instance file; a watcher polls every
   0.15 s) and the time from registering one more instance to the watcher
   yielding it.
4. Watching, Consul: the same against the Consul test agent
   (tests/support/consul_agent.py: a Consul-shaped HTTP server in this process;
   instances registered passing with a TTL check): one `healthy()` query with
   N instances (the cost of each blocking-query answer, parsed), and the time
   from a registration to the watch yielding it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from bench.rpc import Result, _tls_channel, drive, merge, mesh_runtime, start_server
from bench.whole import _client_provider
from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from mesh.security.identity import MeshIdentity
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings

PAYLOADS = {"100 B": 100, "10 KB": 10_000, "1 MB": 1_000_000}
STREAM_MESSAGES = 1000


@dataclass
class GrowthRow:
    name: str
    direct: Result
    mesh: Result

    @property
    def ratio(self) -> float:
        return self.mesh.rps / self.direct.rps


async def _stream_call(stub: Any, request: ping_pb2.PingRequest) -> int:
    n = 0
    async for _ in stub.PingList(request):
        n += 1
    return n


async def payloads_and_streams(seconds: float, rounds: int, inflight: int) -> list[GrowthRow]:
    rows: list[GrowthRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        security = SecuritySettings(pki_dir=str(Path(tmp) / "pki"))
        PkiStore(security).init_ca()
        client_id = MeshIdentity.load("bench-client", security)
        direct_server = start_server(pki_dir=security.pki_dir)
        mesh_server = start_server(chain=True, pki_dir=security.pki_dir)
        channel = _tls_channel(direct_server.port, client_id)
        # Messages up to 1 MB plus framing: raise grpc's 4 MB default nowhere, it suffices.
        runtime = await mesh_runtime(mesh_server.port, _client_provider(), security)
        try:
            direct = ping_pb2_grpc.PingServiceStub(channel)
            mesh = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
            cases: list[tuple[str, ping_pb2.PingRequest, bool]] = [
                (name, ping_pb2.PingRequest(value="x" * size), False)
                for name, size in PAYLOADS.items()
            ]
            cases.append(
                (
                    f"stream of {STREAM_MESSAGES}",
                    ping_pb2.PingRequest(value="s", count=STREAM_MESSAGES),
                    True,
                )
            )
            print(
                f"\npayloads and streams, both sides mTLS; {rounds} x {seconds / rounds:.1f}s"
                " turns per mode"
            )
            header = (
                f"{'case':<16} {'in flight':>9} {'direct/s':>9} {'mesh/s':>9} {'ratio':>6}"
                f" {'direct p99':>10} {'mesh p99':>9}"
            )
            print(header)
            print("-" * len(header))
            for name, request, streaming in cases:
                level = inflight if (not streaming and len(request.value) < 100_000) else 1
                level = min(level, inflight)

                def make(stub: Any, request: Any = request, streaming: bool = streaming) -> Any:
                    if streaming:
                        return lambda _r: _stream_call(stub, request)
                    return lambda _r: stub.Ping(request)

                calls = {"direct": make(direct), "mesh": make(mesh)}
                await calls["direct"](None)
                await calls["mesh"](None)
                runs: dict[str, list[Result]] = {"direct": [], "mesh": []}
                for i in range(rounds):
                    for mode, call in calls.items():
                        server = direct_server if mode == "direct" else mesh_server
                        warm = 0.1 if i == 0 else 0.0
                        runs[mode].append(await drive(call, level, seconds / rounds, warm, server))
                row = GrowthRow(name, merge(runs["direct"]), merge(runs["mesh"]))
                rows.append(row)
                print(
                    f"{name:<16} {level:>9} {row.direct.rps:>9.1f} {row.mesh.rps:>9.1f}"
                    f" {row.ratio:>6.2f} {row.direct.pct(99):>10.2f} {row.mesh.pct(99):>9.2f}"
                )
        finally:
            await channel.close(None)
            await runtime.close()
            direct_server.stop()
            mesh_server.stop()
    return rows


def picks(counts: Sequence[int], n_picks: int = 20_000) -> dict[int, dict[str, float]]:
    """µs of CPU per pick (process time, loop included), the least of five runs: on a
    loaded box wall-clock differences (bench.rpc.pick_cost_us) drown in preemption."""
    import random

    from mesh.balancer.picker import P2CPicker, RoundRobinPicker

    rng = random.Random(7)
    out: dict[int, dict[str, float]] = {}
    for n in counts:
        endpoints = [_Endpoint(rng.randrange(5)) for _ in range(n)]
        out[n] = {}
        for name, picker in (
            ("round_robin", RoundRobinPicker[_Endpoint](rng)),
            ("p2c", P2CPicker[_Endpoint](rng)),
        ):
            picker.update(endpoints)
            pick = picker.pick
            best = float("inf")
            for _ in range(5):
                t = time.process_time()
                for _ in range(n_picks):
                    pick()
                best = min(best, time.process_time() - t)
            out[n][name] = best / n_picks * 1e6
    print("\npicker CPU per pick (µs, loop included):")
    for n, c in out.items():
        print(f"  {n:>4} instances: round_robin {c['round_robin']:.3f}, p2c {c['p2c']:.3f}")
    return out


@dataclass(eq=False)
class _Endpoint:
    inflight: int = 0


async def _first_with(watch: Any, n: int, limit_s: float) -> float:
    """Seconds until `watch` yields a list of `n` instances."""
    t = time.perf_counter()

    async def wait() -> None:
        async for instances in watch:
            if len(instances) >= n:
                return

    await asyncio.wait_for(wait(), limit_s)
    return time.perf_counter() - t


def _instance(i: int, port: int = 1) -> Instance:
    return Instance(f"ping-{i}", "ping", "127.0.0.1", port + i)


async def embedded_watch(counts: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Per count: (µs of CPU per watcher poll, ms from a registration to the watch)."""
    from mesh.discovery.embedded import ServiceScanner

    out: dict[int, tuple[float, float]] = {}
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
            registry = EmbeddedRegistry(Path(tmp) / "reg", health_check=False)
            try:
                for i in range(n):
                    await registry.register(_instance(i))
                scanner = ServiceScanner(Path(tmp) / "reg" / "ping", 3.0, 9.0, time.time)
                scanner.healthy()
                polls = 200
                cpu0 = time.process_time()
                for _ in range(polls):
                    scanner.healthy()
                poll_us = (time.process_time() - cpu0) / polls * 1e6
                watch: Any = registry.watch("ping")
                await _first_with(watch, n, 10)
                await asyncio.sleep(0.2)  # a quiet directory: the next poll trusts its mtime
                t = time.perf_counter()
                await registry.register(_instance(n))
                await _first_with(watch, n + 1, 10)
                late = time.perf_counter() - t
                out[n] = (poll_us, late * 1e3)
                await watch.aclose()
            finally:
                await registry.close()
    print("\nembedded registry, one watcher (polls every 0.15 s):")
    for n, (poll_us, late_ms) in out.items():
        print(
            f"  {n:>4} instances: {poll_us:8.0f} µs CPU per poll"
            f" ({poll_us / 0.15 / 1e4:.2f} % of a core), change seen after {late_ms:6.0f} ms"
        )
    return out


async def consul_watch(counts: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Per count: (ms per healthy() query, ms from a registration to the watch)."""
    import aiohttp

    from mesh.discovery.consul import ConsulRegistry
    from tests.support.consul_agent import ConsulTestAgent

    out: dict[int, tuple[float, float]] = {}
    for n in counts:
        agent = ConsulTestAgent()
        await agent.start()
        registry = ConsulRegistry(agent.address)
        try:
            async with aiohttp.ClientSession() as http:

                async def put(i: int, agent: ConsulTestAgent = agent) -> None:
                    body = {
                        "Name": "ping", "ID": f"ping-{i}", "Address": "127.0.0.1",
                        "Port": 1 + i, "Check": {"TTL": "3600s", "Status": "passing"},
                    }  # fmt: skip
                    url = f"http://{agent.address}/v1/agent/service/register"
                    async with http.put(url, json=body) as r:
                        r.raise_for_status()

                for i in range(n):
                    await put(i)
                await registry.healthy("ping")
                queries = 20
                t = time.perf_counter()
                for _ in range(queries):
                    await registry.healthy("ping")
                query_ms = (time.perf_counter() - t) / queries * 1e3
                watch: Any = registry.watch("ping")
                await _first_with(watch, n, 10)
                t = time.perf_counter()
                await put(n)
                await _first_with(watch, n + 1, 10)
                late = time.perf_counter() - t
                out[n] = (query_ms, late * 1e3)
                await watch.aclose()
        finally:
            await registry.close()
            await agent.stop()
    print("\nConsul (test agent, in this process), one watcher (blocking queries):")
    for n, (query_ms, late_ms) in out.items():
        print(
            f"  {n:>4} instances: {query_ms:7.2f} ms per health query (agent + client),"
            f" change seen after {late_ms:6.0f} ms"
        )
    return out


async def main(
    seconds: float, rounds: int, inflight: int, counts: Sequence[int], consul: bool
) -> None:
    await payloads_and_streams(seconds, rounds, inflight)
    picks(counts)
    await embedded_watch(counts)
    if consul:
        await consul_watch(counts)


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench growth",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=2.0, help="per mode and case (all rounds)")
    p.add_argument("--rounds", type=int, default=4, help="turns each mode takes per case")
    p.add_argument("--inflight", type=int, default=16, help="calls in flight (1 MB, streams: 1)")
    p.add_argument("--instances", default="3,30,300", help="instance counts, comma-separated")
    p.add_argument("--no-consul", action="store_true", help="skip the Consul test agent part")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    counts = [int(x) for x in a.instances.split(",") if x.strip()]
    asyncio.run(main(a.seconds, max(1, a.rounds), a.inflight, counts, not a.no_consul))


if __name__ == "__main__":
    cli()
