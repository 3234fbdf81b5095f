"""What traffic subsets cost the proxyless client: the pick, the call, and RPS.

Run: `python -m bench picker [--seconds S] [--rounds R] [--levels 1,16]`.
Side by side in one run, no policy (one pool, today's path) vs a weighted policy
(blue 90 / green 10: a weighted subset draw, then the subset's own picker) vs the
header override (`x-mesh-track: green`):

1. per pick, µs: `EndpointPool.pick` / `pick_track` over 6 instances (3 blue,
   3 green) with connected fake channels, round_robin and p2c;
2. client CPU per call without gRPC or network (fake calls through MeshChannel,
   empty interceptor chain): the whole runner + pick, where the header check lives;
3. real unary calls over loopback to two bare ping servers (child processes, one
   per track), the full client chain (tracing off): calls/s and client CPU per
   call, modes taking turns (`--rounds`), ratios to "no policy".
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from bench.rpc import (
    PLAINTEXT,
    Result,
    _cpu_per_call_in_turns,
    _FakeChannel,
    drive,
    merge,
    start_server,
    tracer,
)
from mesh.balancer.pool import EndpointPool
from mesh.client.channel import MeshChannel
from mesh.client.runtime import MeshRuntime
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.settings import Settings
from mesh.traffic.policy import TrafficPolicy

SPLIT = TrafficPolicy("ping", {"blue": 90, "green": 10})
HEADER = (("x-mesh-track", "green"),)


def _instances(n_per_track: int, ports: Sequence[int] = ()) -> list[Instance]:
    out = []
    for i, track in enumerate(t for t in ("blue", "green") for _ in range(n_per_track)):
        port = ports[i] if ports else 1000 + i
        out.append(Instance(f"ping-{i}", "ping", "127.0.0.1", port, "1.0", meta={"track": track}))
    return out


async def _fake_pool(lb_policy: str) -> EndpointPool:
    pool = EndpointPool(
        "ping",
        StaticRegistry(_instances(3)),
        lambda _i: _FakeChannel(),  # type: ignore[arg-type,return-value]
        lb_policy=lb_policy,
        rng=random.Random(7),
    )
    pool.start()
    for _ in range(50):  # connectivity followers run on the loop
        await asyncio.sleep(0)
    return pool


def _per_pick_us(pick: Callable[[], Any], picks: int) -> float:
    """CPU µs per call of `pick` (this thread's CPU time, so other processes on a busy
    machine do not count; the empty loop's cost subtracted)."""
    clock = time.thread_time
    t = clock()
    for _ in range(picks):
        pick()
    spent = clock() - t
    t = clock()
    for _ in range(picks):
        pass
    return (spent - (clock() - t)) / picks * 1e6


async def pick_costs(picks: int = 200_000) -> dict[str, dict[str, float]]:
    """µs per pick by lb policy and mode (best of five)."""
    out: dict[str, dict[str, float]] = {}
    for lb in ("round_robin", "p2c"):
        pool = await _fake_pool(lb)
        plain = pool.pick
        pool.set_policy(SPLIT)
        split = pool.pick
        green = functools.partial(pool.pick_track, "green")
        out[lb] = {
            name: min(_per_pick_us(fn, picks // 5) for _ in range(5))
            for name, fn in (("no policy", plain), ("subsets 90/10", split), ("header", green))
        }
        await pool.close()
    return out


async def call_costs(calls: int = 20_000) -> dict[str, float]:
    """Client CPU µs per call through MeshChannel (no interceptors, fake calls)."""
    request = ping_pb2.PingRequest()
    channels: list[MeshChannel] = []
    variants: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    try:
        for name, policy, metadata in (
            ("no policy", None, None),
            ("subsets 90/10", SPLIT, None),
            ("header", None, HEADER),
        ):
            pool = await _fake_pool("p2c")
            pool.set_policy(policy)
            channels.append(MeshChannel(pool, []))
            stub = ping_pb2_grpc.PingServiceStub(channels[-1])
            variants.append((name, functools.partial(stub.Ping, request, metadata=metadata)))
        return dict(await _cpu_per_call_in_turns(variants, calls))
    finally:
        for channel in channels:
            await channel.close()


async def _runtime(ports: Sequence[int]) -> MeshRuntime:
    settings = Settings(service="bench-client", registry="none", security=PLAINTEXT)
    registry = StaticRegistry(_instances(1, ports))
    return await MeshRuntime.create(settings, registry=registry, tracer_provider=tracer(False))


async def compare_calls(levels: Sequence[int], seconds: float, rounds: int) -> None:
    servers = [start_server(), start_server()]
    rt_plain = await _runtime([s.port for s in servers])
    rt_split = await _runtime([s.port for s in servers])
    try:
        plain = await rt_plain.connect("ping", ping_pb2_grpc.PingServiceStub)
        split_channel = rt_split.channel("ping")
        split_channel.pool.set_policy(TrafficPolicy("ping", {"blue": 50, "green": 50}))
        split = ping_pb2_grpc.PingServiceStub(split_channel)
        modes: dict[str, Callable[..., Any]] = {
            "no policy": plain.Ping,
            "subsets": split.Ping,
            "header": functools.partial(plain.Ping, metadata=HEADER),
        }
        for call in modes.values():
            await call(ping_pb2.PingRequest(), timeout=10)
        print(
            f"\nreal calls, full client chain, 2 bare servers (blue, green; subsets 50/50);"
            f" {rounds} x {seconds / rounds:.1f}s turns per mode and level"
        )
        header = (
            f"{'inflight':>8} {'mode':<10} {'calls/s':>9} {'p50 ms':>7} {'client us':>9}"
            f" {'rps ratio':>9} {'cpu ratio':>9}"
        )
        print(header)
        print("-" * len(header))
        for level in levels:
            runs: dict[str, list[Result]] = {m: [] for m in modes}
            for i in range(rounds):
                for name, call in modes.items():
                    runs[name].append(
                        await drive(call, level, seconds / rounds, 0.2 if i == 0 else 0.0)
                    )
            results = {name: merge(rs) for name, rs in runs.items()}
            base = results["no policy"]
            for name, r in results.items():
                print(
                    f"{level:>8} {name:<10} {r.rps:>9.0f} {r.pct(50):>7.2f} {r.cpu_us:>9.0f}"
                    f" {r.rps / base.rps:>9.3f} {r.cpu_us / base.cpu_us:>9.3f}"
                )
    finally:
        await rt_plain.close()
        await rt_split.close()
        for s in servers:
            s.stop()


async def main(levels: Sequence[int], seconds: float, rounds: int, network: bool) -> None:
    costs = await pick_costs()
    print("per pick, µs (6 instances: 3 blue, 3 green; subsets = blue 90 / green 10)")
    print(f"  {'lb policy':<12} {'no policy':>10} {'subsets':>10} {'header':>10} {'delta':>8}")
    for lb, row in costs.items():
        delta = row["subsets 90/10"] - row["no policy"]
        print(
            f"  {lb:<12} {row['no policy']:>10.3f} {row['subsets 90/10']:>10.3f}"
            f" {row['header']:>10.3f} {delta:>+8.3f}"
        )
    per_call = await call_costs()
    print("\nclient CPU per call without network (MeshChannel runner + pick, no interceptors)")
    base = per_call["no policy"]
    for name, us in per_call.items():
        print(f"  {name:<14} {us:6.2f} µs  ({us - base:+.2f})")
    print(f"  of which the track check on a call without one: {track_check_us():.3f} µs")
    server = await server_costs()
    print("\nserver CPU per call, the traffic interceptor alone (fake handler, no network)")
    for name, us in server.items():
        print(f"  {name:<34} {us:6.2f} µs")
    if network:
        await compare_calls(levels, seconds, rounds)


async def server_costs(calls: int = 30_000) -> dict[str, float]:
    """CPU µs per call of a handler alone, then behind the traffic interceptor without
    faults, and with a fault rule that never fires (the per-call draw)."""
    import grpc

    from bench.rpc import _FakeServicerContext, _HandlerCallDetails, _run_interceptors
    from interceptors.traffic import FaultRule, TrafficServerInterceptor

    response = ping_pb2.PingResponse(value="x")

    async def ping(request: Any, context: Any) -> ping_pb2.PingResponse:
        return response

    handler = grpc.unary_unary_rpc_method_handler(ping)
    metadata = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),)
    details = _HandlerCallDetails("/shop.testing.v1.PingService/Ping", metadata)
    context = _FakeServicerContext(metadata)
    idle_rule = [FaultRule(abort_fraction=0.0, delay_fraction=1e-9, delay_s=0.001)]
    variants: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    for name, chain in (
        ("handler only", []),
        ("+ traffic, no fault", [TrafficServerInterceptor()]),
        ("+ traffic, a fault (not firing)", [TrafficServerInterceptor(idle_rule)]),
    ):

        async def one(chain: list[Any] = chain) -> Any:
            h = await _run_interceptors(iter(chain), lambda _d: handler, details)
            return await h.unary_unary(None, context)

        variants.append((name, one))
    return dict(await _cpu_per_call_in_turns(variants, calls))


def track_check_us(n: int = 300_000) -> float:
    """What every call pays for the header override when it does not use it: the
    metadata type check, one key lookup and one contextvar read (MeshChannel._start)."""
    from grpc.aio import Metadata

    from interceptors.traffic import TRACK_KEY, incoming_track

    md = Metadata(("traceparent", "00-x-y-00"))

    def check() -> bool:
        return type(md) is not Metadata or TRACK_KEY in md or incoming_track.get() is not None

    return min(_per_pick_us(check, n // 5) for _ in range(5))


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench picker",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per mode and level (all rounds)")
    p.add_argument("--rounds", type=int, default=6, help="turns each mode takes per level")
    p.add_argument("--levels", default="1,16", help="calls in flight, comma-separated")
    p.add_argument("--no-network", action="store_true", help="only the in-process costs")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    asyncio.run(main(levels, a.seconds, max(1, a.rounds), not a.no_network))


if __name__ == "__main__":
    cli()
