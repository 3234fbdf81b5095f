"""What the server's caller policy costs per call, on real mTLS calls over loopback.

Run: `python -m bench policy [--calls N] [--rounds R] [--channels C] [--in-flight K]`.

One process holds three mTLS ping servers (the test ping service, its handlers
wrapped at registration as `mesh.server.start_service` wraps them) and their
client. Every server's outermost wrapper notes the time; the handler notes it
again when it starts, so the interval is what runs between the two without
network or event loop in it (nothing there awaits the loop):

  none      the wrapper alone (what the interval costs without a policy)
  memo      the caller policy, identity kept per connection and verdicts per
            (method, identity) (`_fastpath.MEMO_CALLER`, the default)
  per-call  the caller policy reading `auth_context()` and deciding every call
            (`MESH_FASTPATH=0`)

The modes take turns (`--rounds`, `--calls` each, over `--channels` connections
with `--in-flight` calls at a time); printed: the median and mean interval per
mode and the policy's own cost (mode - none). Also, first, what each of the
reads involved costs inside one real call (best of five `timeit` runs; hot
caches, so a floor): `auth_context()` against the connection check
(`peer()`, `peer_identity_key()`, `peer_identities()`).

Limits: wall time on a shared box (medians, and the modes take turns so load
hits them alike); the client runs in the same process, which keeps the turns
comparable but not the figures absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import timeit
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath
from interceptors import policy as policy_module
from interceptors._handler import StreamBehaviour, UnaryBehaviour, WrappingServerInterceptor
from interceptors.registered import chained_server
from mesh.security.identity import MeshIdentity
from mesh.security.pki import service_of
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings
from tests.support.ping import PingServicer

_started: ContextVar[int] = ContextVar("bench_policy_started", default=0)
PING = "/shop.testing.v1.PingService/Ping"


class _Stopwatch(WrappingServerInterceptor):
    """Outermost: notes when the call's wrapped handler starts."""

    def wrap_unary(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            _started.set(time.perf_counter_ns())
            return await behaviour(request, context)

        return timed

    def wrap_stream(self, method: str, behaviour: StreamBehaviour) -> StreamBehaviour:
        return behaviour


class _Servicer(PingServicer):
    def __init__(self) -> None:
        super().__init__("bench")
        self.samples: list[int] = []
        self.reads: dict[str, list[float]] = {}

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.samples.append(time.perf_counter_ns() - _started.get())
        if request.value == "reads":
            self._time_reads(context)
        return ping_pb2.PingResponse(value=request.value)

    def _time_reads(self, context: Any, number: int = 2000) -> None:
        def check() -> Any:
            return context.peer(), context.peer_identity_key(), context.peer_identities()

        for name, fn in (
            ("auth_context()", context.auth_context),
            ("peer()", context.peer),
            ("peer_identity_key()", context.peer_identity_key),
            ("peer_identities()", context.peer_identities),
            ("the three together", check),
        ):
            best = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
            self.reads.setdefault(name, []).append(best)


async def _server(
    mode: str, identity: MeshIdentity, trust_domain: str
) -> tuple[grpc.aio.Server, _Servicer, int]:
    chain: list[Any] = [_Stopwatch()]
    if mode != "none":
        _fastpath.MEMO_CALLER = mode == "memo"  # read when the policy wraps a method
        chain.append(
            policy_module.CallerPolicyServerInterceptor(
                lambda method: frozenset({"bench-client"}) if method == PING else None,
                lambda peer: service_of(peer, trust_domain),
            )
        )
    registrar = chained_server(chain, registered=True, options=[("grpc.so_reuseport", 0)])
    servicer = _Servicer()
    ping_pb2_grpc.add_PingServiceServicer_to_server(servicer, registrar)
    port = registrar.server.add_secure_port("127.0.0.1:0", identity.server_credentials())
    await registrar.server.start()
    return registrar.server, servicer, port


async def _drive(stubs: Sequence[Any], calls: int, in_flight: int) -> None:
    left = calls

    async def worker(i: int) -> None:
        nonlocal left
        stub = stubs[i % len(stubs)]
        while left > 0:
            left -= 1
            await stub.Ping(ping_pb2.PingRequest(value="x"), timeout=10)

    await asyncio.gather(*(worker(i) for i in range(in_flight)))


async def run(calls: int, rounds: int, channels: int, in_flight: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        security = SecuritySettings(pki_dir=str(Path(tmp) / "pki"))
        PkiStore(security).init_ca()
        server_id = MeshIdentity.load("ping", security)
        client_id = MeshIdentity.load("bench-client", security)
        modes = ("none", "memo", "per-call")
        servers = {m: await _server(m, server_id, server_id.trust_domain) for m in modes}
        open_channels: list[grpc.aio.Channel] = []
        stubs: dict[str, list[Any]] = {}
        for mode, (_, _, port) in servers.items():
            for _ in range(channels):
                channel = grpc.aio.secure_channel(
                    f"127.0.0.1:{port}",
                    client_id.channel_credentials(),
                    options=[
                        *client_id.channel_options("ping"),
                        ("grpc.use_local_subchannel_pool", 1),
                    ],
                )
                open_channels.append(channel)
                stubs.setdefault(mode, []).append(ping_pb2_grpc.PingServiceStub(channel))
        try:
            # Absent before the memo: run from a base checkout, every mode reads per call.
            memo_selected = getattr(_fastpath, "MEMO_CALLER", False)
            for mode in modes:  # connect, warm up, and time the reads in a real call
                _fastpath.MEMO_CALLER = mode != "per-call"
                await _drive(stubs[mode], 200, in_flight)
                for stub in stubs[mode][:1]:
                    for _ in range(3):
                        await stub.Ping(ping_pb2.PingRequest(value="reads"), timeout=30)
            reads = servers["none"][1].reads
            print("reads inside a real mTLS call (µs, best of 5 x 2000; three calls):")
            for name, values in reads.items():
                print(f"  {name:<22} " + " / ".join(f"{v:.2f}" for v in values))
            for _, servicer, _ in servers.values():
                servicer.samples.clear()
            for _ in range(rounds):
                for mode in modes:
                    _fastpath.MEMO_CALLER = mode != "per-call"  # peer_identity reads it per call
                    await _drive(stubs[mode], calls, in_flight)
            _fastpath.MEMO_CALLER = memo_selected
            print(
                f"\nwrapper start -> handler start, µs ({rounds} turns x {calls} calls,"
                f" {channels} connections, {in_flight} in flight):"
            )
            base = _stats(servers["none"][1].samples)
            for mode in modes:
                median, mean = _stats(servers[mode][1].samples)
                extra = (
                    ""
                    if mode == "none"
                    else f"   policy {median - base[0]:6.2f} (median) {mean - base[1]:6.2f} (mean)"
                )
                print(f"  {mode:<9} median {median:6.2f} mean {mean:6.2f}{extra}")
        finally:
            for channel in open_channels:
                await channel.close(None)
            for server, _, _ in servers.values():
                await server.stop(None)


def _stats(samples: Sequence[int]) -> tuple[float, float]:
    ordered = sorted(samples)
    trimmed = ordered[: max(1, int(len(ordered) * 0.99))]  # the slowest 1 %: preemption
    return statistics.median(ordered) / 1e3, statistics.fmean(trimmed) / 1e3


async def _main(a: argparse.Namespace) -> None:
    await run(a.calls, a.rounds, a.channels, a.in_flight)


def cli(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench policy",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--calls", type=int, default=2000, help="calls per mode and turn")
    p.add_argument("--rounds", type=int, default=5, help="turns each mode takes")
    p.add_argument("--channels", type=int, default=4, help="connections per server")
    p.add_argument("--in-flight", type=int, default=16, help="calls in flight")
    asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    cli()
