"""Unary RPC cost of the mesh, client and server side, side by side with bare grpc.aio.

Run: `python -m bench.rpc [--seconds S] [--rounds R] [--levels 1,16,64]` (or
`python -m bench rpc`). Ping servers run in child processes; this process is
the client. For each number of calls in flight the modes take turns
(round-robin over `--rounds` rounds, so drift hits them alike).

Client side, against a bare ping server:

  bare      grpc.aio.insecure_channel + generated stub
  mesh      mesh connect, full chain (deadline, retry, breaker, tracing, metrics),
            tracing sampled off
  mesh+tr   the same with every call traced (BatchSpanProcessor, exporter that
            drops the spans)

Server side, a bare grpc.aio client calling (each call carries a traceparent):

  bare      the ping server without interceptors
  mesh      the ping server with the mesh server chain (mesh.server.server_interceptors:
            tracing, metrics, logging, errors, deadline), the caller's trace unsampled,
            wrapped around the handler at registration as services run it
  mesh+tr   the same, the caller's trace sampled (the server records every span)
  (--server-only adds `before`, the chain before issue 15, and `mesh-int`, the mesh
  chain as grpc.aio interceptors, as services ran it before the registered chain)

Printed: calls/s, p50/p99 latency, client CPU per call (time.process_time of
this process / calls), server CPU per call (the server process's, likewise),
and ratios to bare. When one process is the bottleneck the RPS ratio hides
the other's cost; CPU per call does not. Then the picker's cost per pick, and
each chain's CPU per call without gRPC or network (fake calls), as each
interceptor is added: what each one costs, precisely. `--network-breakdown`
measures the client chain over the network (noisier).

Identity and mTLS (a throwaway CA in a temporary directory), client and server
together, ratios to plaintext:

  plain     bare grpc.aio client → bare server, plaintext
  tls       bare grpc.aio client → bare server, mutual TLS (client certificate)
  mesh      mesh client → server with the mesh chain, MESH_TLS=off
  mesh+tls  mesh client → server with the mesh chain, mTLS + caller policy (the default)

then the handshake: sequential new connections (one Ping each) plaintext vs
mTLS, wall time and client CPU per connection. `--tls-only` runs just this part.
The comparisons above this one run with MESH_TLS=off (they measure the chain).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import multiprocessing
import os
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from base.settings import read_field
from interceptors import _fastpath
from interceptors.registered import split_chain, wrap_method
from mesh.balancer.picker import P2CPicker, RoundRobinPicker
from mesh.client.runtime import MeshRuntime
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.gc_tuning import tune_after_start
from mesh.security.identity import MeshIdentity
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings, Settings

PLAINTEXT = SecuritySettings(tls=False)

Call = Callable[[ping_pb2.PingRequest], Awaitable[Any]]


# -- the servers, in their own processes ---------------------------------------------------

# The trace the server-side modes' calls belong to (flags 00: unsampled, 01: sampled).
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"


@dataclass
class _ServerRuntime:
    """What mesh.server.server_interceptors needs of a runtime."""

    registry: Any
    prometheus: Any
    metrics: Any
    tracer_provider: Any


def server_chain(
    log_level: str, trust_domain: str = "", *, fused: bool | None = None, before: bool = False
) -> list[Any]:
    """The mesh server chain as services run it: the runtime's default tracer provider
    (parentbased_always_on), spans batched to an exporter that drops them, metrics in
    their own registry, access log lines at `log_level` written to /dev/null, sampled
    as the defaults say (MESH_ACCESS_LOG_EVERY...); `fused` None: as MESH_FASTPATH says.
    `before`: the chain as it was before issue 15 (six interceptors, every call logged)."""
    from prometheus_client import CollectorRegistry

    from interceptors.metrics import RpcMetrics
    from interceptors.tracing import make_tracer_provider
    from mesh.server import server_interceptors

    access = logging.getLogger("interceptors.logging")  # the access log (module logger)
    access.setLevel(log_level)
    access.propagate = False
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives with the process
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    access.handlers[:] = [handler]
    provider = make_tracer_provider("bench-server", {})
    provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    prometheus = CollectorRegistry()
    metrics = RpcMetrics(prometheus)
    chain = server_interceptors(
        _ServerRuntime(None, prometheus, metrics, provider),  # type: ignore[arg-type]
        fused=False if before else fused,
    )
    if before:
        for interceptor in chain:
            if hasattr(interceptor, "sample_every"):
                interceptor.sample_every = 1
    if trust_domain:  # with mTLS, as mesh.server.start_service adds it
        from mesh.security.policy import caller_policy

        chain.append(caller_policy(trust_domain, metrics.record_denial))
    return chain


def _serve(
    conn: Connection, chain: bool, log_level: str, pki_dir: str, before: bool, registered: bool
) -> None:
    async def main() -> None:
        from tests.support.ping import start_ping_server

        identity = None
        if pki_dir:
            identity = MeshIdentity.load("ping", SecuritySettings(pki_dir=pki_dir))
        trust = identity.trust_domain if identity is not None else ""
        server = await start_ping_server(
            "bench",
            server_chain(log_level, trust, before=before) if chain else (),
            identity=identity,
            # As mesh.server.start_service runs its chain (before issue 15: interceptors).
            registered=registered and not before,
        )
        if chain:
            tune_gc_as_services_do()
        conn.send(server.port)
        await server.server.wait_for_termination()

    def cpu_clock() -> None:
        # Answers "how much CPU so far" (every thread of the process) until the pipe closes.
        with contextlib.suppress(EOFError, OSError):
            while conn.recv():
                conn.send(time.process_time())

    threading.Thread(target=cpu_clock, daemon=True).start()
    asyncio.run(main())


def tune_gc_as_services_do() -> None:
    """Python's collector as `run_service` sets it once a service serves
    (`MESH_GC_GEN0_THRESHOLD` from this process's environment)."""
    tune_after_start(read_field(Settings, "gc_gen0_threshold", os.environ))


@contextlib.contextmanager
def gc_as_services() -> Iterator[None]:
    """This process's collector as a service's (`tune_gc_as_services_do`) for the block,
    then as it was: thresholds restored, and unfrozen if nothing was frozen before."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    tune_gc_as_services_do()
    try:
        yield
    finally:
        if not frozen:
            gc.unfreeze()
        gc.set_threshold(*thresholds)


@dataclass
class Server:
    proc: multiprocessing.process.BaseProcess
    port: int
    conn: Connection

    def cpu(self) -> float:
        self.conn.send(True)
        return float(self.conn.recv())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(5)


def start_server(
    chain: bool = False,
    log_level: str = "INFO",
    pki_dir: str = "",
    before: bool = False,
    registered: bool = True,
) -> Server:
    """A ping server in a child process; mTLS as `ping` from `pki_dir`'s CA when given.
    `registered`: the chain wrapped at registration (as services run it), else as
    grpc.aio interceptors (as they did until the registered chain)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    args = (child, chain, log_level, pki_dir, before, registered)
    proc = ctx.Process(target=_serve, args=args, daemon=True)
    proc.start()
    if not parent.poll(30):
        proc.kill()
        raise RuntimeError("the ping server did not start")
    return Server(proc, int(parent.recv()), parent)


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Result:
    calls: int
    seconds: float
    cpu_s: float
    latencies: list[float]
    server_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.calls * 1e6

    @property
    def server_cpu_us(self) -> float:
        return self.server_cpu_s / self.calls * 1e6

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3


def merge(results: Sequence[Result]) -> Result:
    return Result(
        sum(r.calls for r in results),
        sum(r.seconds for r in results),
        sum(r.cpu_s for r in results),
        [x for r in results for x in r.latencies],
        sum(r.server_cpu_s for r in results),
    )


async def drive(
    call: Call,
    inflight: int,
    seconds: float,
    warmup_s: float = 0.2,
    server: Server | None = None,
) -> Result:
    """`inflight` closed-loop callers for `seconds`, after `warmup_s` not measured
    (and `server`'s CPU over the same time)."""
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
    server_cpu0 = server.cpu() if server is not None else 0.0
    cpu0, t0 = time.process_time(), clock()
    stop_at = t0 + seconds
    await asyncio.gather(*(caller() for _ in range(inflight)))
    elapsed, cpu = clock() - t0, time.process_time() - cpu0
    server_cpu = server.cpu() - server_cpu0 if server is not None else 0.0
    return Result(len(latencies), elapsed, cpu, latencies, server_cpu)


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


async def mesh_runtime(
    port: int, provider: TracerProvider, security: SecuritySettings = PLAINTEXT
) -> MeshRuntime:
    settings = Settings(service="bench-client", registry="none", security=security)
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


# -- the chains without a network ----------------------------------------------------------


class _OkStatus:
    """What grpc.aio keeps of a finished call's status (`_cython_call._status`)."""

    def code(self) -> int:
        return 0

    def details(self) -> str:
        return ""


class _CyCall:
    def __init__(self) -> None:
        self._status: _OkStatus | None = None


class _FakeCall:
    """A call that succeeds when first awaited or asked for its status: like a grpc.aio
    call, one object per call whose done callbacks run when it finishes. What the chain
    costs, minus gRPC and the network."""

    _response = ping_pb2.PingResponse(value="x")
    _ok = _OkStatus()

    def __init__(self) -> None:
        self._cython_call = _CyCall()
        self._callbacks: list[Callable[[Any], None]] = []

    def _finish(self) -> None:
        if self._cython_call._status is None:
            self._cython_call._status = self._ok
            for callback in self._callbacks:
                callback(self)

    def __await__(self) -> Any:
        self._finish()
        return self._response
        yield

    def done(self) -> bool:
        return self._cython_call._status is not None

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    async def code(self) -> grpc.StatusCode:
        self._finish()
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

    def unary_unary(self, method: str, **kwargs: Any) -> Callable[..., _FakeCall]:
        return lambda request, **kw: _FakeCall()

    async def close(self, grace: float | None = None) -> None:
        self._forever.set()


async def _cpu_per_call_in_turns(
    variants: Sequence[tuple[str, Callable[[], Awaitable[Any]]]], calls: int, rounds: int = 5
) -> list[tuple[str, float]]:
    """Microseconds of CPU per call of each variant, best of `rounds` runs of `calls` //
    `rounds` calls, the variants taking turns (forward, then backward, ...).

    Why turns: a chain's cost is a difference of two variants (the chain minus the
    handler alone), and this box slows by a third for seconds at a time. Measured one
    variant after the other, a slow second fell on some variants and not others:
    `bench summary` printed `server_chain_us` 12.2 where the same code measured
    7.6-8.2 alone (6 Dec 2026; once, right after the server-side load, the handler
    alone cost twice its usual 0.8 µs). Taking turns puts every variant in every
    moment, so their differences hold.

    Python's collector runs as in a service (`gc_as_services`: the process's objects
    frozen, young collections every `MESH_GC_GEN0_THRESHOLD` allocations): with
    Python's defaults, a collection's cost grows with whatever the benchmark process
    holds by then, which is not the chain's cost."""
    with gc_as_services():
        for _, call in variants:
            for _ in range(500):
                await call()
        per_run = max(1, calls // rounds)
        best = {label: float("inf") for label, _ in variants}
        for i in range(rounds):
            for label, call in variants if i % 2 == 0 else variants[::-1]:
                cpu0 = time.process_time()
                for _ in range(per_run):
                    await call()
                best[label] = min(best[label], (time.process_time() - cpu0) / per_run * 1e6)
    return [(label, best[label]) for label, _ in variants]


def _print_steps(title: str, steps: Sequence[tuple[str, float]]) -> None:
    """Steps are cumulative; the last one, a variant of the one before, shows no delta."""
    print(title)
    previous = 0.0
    for i, (label, us) in enumerate(steps):
        delta = f"({us - previous:+.1f})" if i < len(steps) - 1 else ""
        print(f"  {label:<24} {us:6.1f} {delta}")
        previous = us


async def chain_costs(calls: int = 20_000) -> list[tuple[str, float]]:
    """Microseconds of CPU per call for the client runner, then each interceptor added."""
    from mesh.balancer.pool import EndpointPool
    from mesh.client.channel import MeshChannel

    registry = StaticRegistry([Instance(f"fake-{i}", "ping", "127.0.0.1", 1 + i) for i in range(3)])
    rt = await mesh_runtime(1, tracer(False))
    rt_on = await mesh_runtime(1, tracer(True))
    full = rt.client_interceptors("ping")
    names = ["end user", "deadline", "retry", "breaker", "tracing(off)", "metrics"]
    # Partial chains run as separate interceptors; the full ones fused (mesh/client/fused.py)
    # unless marked "separate" (the six interceptors, as with MESH_FASTPATH=0).
    chains: list[tuple[str, list[Any], bool]] = [("runner + pick", [], True)]
    chains += [(f"+ {name}", full[: i + 1], True) for i, name in enumerate(names)]
    chains.append(("full, tracing on, separate", rt_on.client_interceptors("ping"), False))
    chains.append(("full, tracing on", rt_on.client_interceptors("ping"), True))
    request = ping_pb2.PingRequest()
    channels: list[MeshChannel] = []
    variants: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    try:
        for label, chain, fuse in chains:
            pool = EndpointPool("ping", registry, lambda _i: _FakeChannel())  # type: ignore[arg-type,return-value]
            _fastpath.FUSE_CLIENT_CHAIN = fuse and any(_fastpath.selected().values())
            channels.append(MeshChannel(pool, chain))
            _fastpath.FUSE_CLIENT_CHAIN = any(_fastpath.selected().values())
            await asyncio.wait_for(channels[-1].channel_ready(), 5)
            stub = ping_pb2_grpc.PingServiceStub(channels[-1])
            variants.append((label, functools.partial(stub.Ping, request)))
        return await _cpu_per_call_in_turns(variants, calls)
    finally:
        for channel in channels:
            await channel.close()
        await rt.close()
        await rt_on.close()


class _FakeServicerContext:
    """What the server interceptors use of a grpc.aio ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return 5.0

    def code(self) -> grpc.StatusCode | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50412"


@dataclass(frozen=True)
class _HandlerCallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def _run_interceptors(
    interceptors: Any, query: Callable[[Any], Any], details: _HandlerCallDetails
) -> Any:
    # As grpc.aio's server runs its interceptors for every call (_run_interceptor in
    # grpc/_cython/_cygrpc/aio/server.pyx.pxi): a coroutine and a partial per interceptor.
    interceptor = next(interceptors, None)
    if interceptor is None:
        return query(details)
    continuation = functools.partial(_run_interceptors, interceptors, query)
    return await interceptor.intercept_service(continuation, details)


async def server_chain_costs(log_level: str, calls: int = 20_000) -> list[tuple[str, float]]:
    """Microseconds of CPU per call for the server chain (mesh.server's, in its order)
    as each interceptor is added, the caller's trace unsampled; then sampled."""
    response = ping_pb2.PingResponse(value="x")

    async def ping(request: Any, context: Any) -> ping_pb2.PingResponse:
        return response

    handler = grpc.unary_unary_rpc_method_handler(
        ping,
        request_deserializer=ping_pb2.PingRequest.FromString,
        response_serializer=ping_pb2.PingResponse.SerializeToString,
    )
    method = "/shop.testing.v1.PingService/Ping"
    query: Callable[[Any], Any] = lambda details: handler  # noqa: E731
    chain = server_chain(log_level, fused=False)
    fused = server_chain(log_level, fused=True)
    raw = ping_pb2.PingRequest(value="bench").SerializeToString()
    variants: list[tuple[str, list[Any], str]] = [("handler only", [], "00")]
    for i, interceptor in enumerate(chain):
        name = type(interceptor).__name__.removesuffix("Interceptor").removesuffix("Server")
        name = name.lower()
        label = f"+ {name}" + (" (unsampled)" if name == "tracing" else "")
        if name == "logging":
            label += f" ({log_level})"
        variants.append((label, chain[: i + 1], "00"))
    variants.append(("full, sampled", chain, "01"))
    every_call = server_chain(log_level, fused=False)
    for interceptor in every_call:
        if hasattr(interceptor, "sample_every"):
            interceptor.sample_every = 1  # as before MESH_ACCESS_LOG_EVERY
    variants.append(("separate, every call logged", every_call, "00"))
    variants.append(("fused (default)", fused, "00"))
    variants.append(("fused, sampled", fused, "01"))
    # As mesh.server.start_service runs it: wrapped once, at registration, no interceptor.
    registered = wrap_method(split_chain(fused)[1], method, handler)
    variants.append(("fused, registered", [], "00"))
    queries = {"fused, registered": lambda details: registered}
    calls_of: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
    for label, interceptors, flags in variants:
        metadata = (("traceparent", TRACE.format(flags=flags)),)
        details = _HandlerCallDetails(method, metadata)
        context = _FakeServicerContext(metadata)
        find = queries.get(label, query)

        async def one(
            interceptors: list[Any] = interceptors,
            details: Any = details,
            context: Any = context,
            query: Callable[[Any], Any] = find,
        ) -> Any:
            # As grpc.aio then does: (de)serialise with the handler's functions, if any.
            h = await _run_interceptors(iter(interceptors), query, details)
            parse, serialise = h.request_deserializer, h.response_serializer
            response = await h.unary_unary(parse(raw) if parse else raw, context)
            return serialise(response) if serialise else response

        calls_of.append((label, one))
    return await _cpu_per_call_in_turns(calls_of, calls)


# -- the run --------------------------------------------------------------------------------


def _print_header(title: str) -> None:
    print(title)
    header = (
        f"{'inflight':>8} {'mode':<8} {'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'client us':>9} {'server us':>9} {'rps/bare':>8} {'cpu/bare':>8}"
    )
    print(header)
    print("-" * len(header))


async def _turns(
    modes: dict[str, tuple[Call, Server]],
    levels: Sequence[int],
    seconds: float,
    rounds: int,
    cpu_of: Callable[[Result], float],
) -> dict[int, dict[str, Result]]:
    """Each level: the modes take turns; one line per mode, ratios to the first.
    Returns the merged results per level and mode."""
    out: dict[int, dict[str, Result]] = {}
    for level in levels:
        runs: dict[str, list[Result]] = {m: [] for m in modes}
        for i in range(rounds):
            for name, (call, server) in modes.items():
                warmup = 0.2 if i == 0 else 0.0
                runs[name].append(await drive(call, level, seconds / rounds, warmup, server))
        results = out[level] = {name: merge(rs) for name, rs in runs.items()}
        base = next(iter(results.values()))
        for name, r in results.items():
            print(
                f"{level:>8} {name:<8} {r.rps:>9.0f} {r.pct(50):>7.2f} {r.pct(99):>7.2f}"
                f" {r.cpu_us:>9.0f} {r.server_cpu_us:>9.0f} {r.rps / base.rps:>8.2f}"
                f" {cpu_of(r) / cpu_of(base):>8.2f}"
            )
    return out


async def compare(server: Server, levels: Sequence[int], seconds: float, rounds: int) -> None:
    """The client side: bare stub vs the mesh client, against one bare server."""
    port = server.port
    bare_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    bare = ping_pb2_grpc.PingServiceStub(bare_channel)
    rt_off = await mesh_runtime(port, tracer(False))
    rt_on = await mesh_runtime(port, tracer(True))
    mesh_off = await rt_off.connect("ping", ping_pb2_grpc.PingServiceStub)
    mesh_on = await rt_on.connect("ping", ping_pb2_grpc.PingServiceStub)
    modes: dict[str, tuple[Call, Server]] = {
        "bare": (bare.Ping, server),
        "mesh": (mesh_off.Ping, server),
        "mesh+tr": (mesh_on.Ping, server),
    }
    for stub in (bare, mesh_off, mesh_on):
        await stub.Ping(ping_pb2.PingRequest(), timeout=10)
    _print_header(
        f"client side: unary Ping to a bare server; {rounds} x {seconds / rounds:.1f}s turns"
        " per mode and level (cpu/bare: client CPU)"
    )
    await _turns(modes, levels, seconds, rounds, lambda r: r.cpu_us)
    await bare_channel.close(None)
    await rt_off.close()
    await rt_on.close()


async def compare_servers(
    bare_server: Server,
    chain_server: Server,
    levels: Sequence[int],
    seconds: float,
    rounds: int,
    before_server: Server | None = None,
    interceptors_server: Server | None = None,
) -> dict[int, dict[str, Result]]:
    """The server side: a bare client calling a bare server vs one with the mesh chain.
    `interceptors_server` (mode "mesh-int", unsampled): the same chain run as grpc.aio
    interceptors instead of wrapped at registration."""
    bare_channel = grpc.aio.insecure_channel(f"127.0.0.1:{bare_server.port}")
    chain_channel = grpc.aio.insecure_channel(f"127.0.0.1:{chain_server.port}")
    to_bare = ping_pb2_grpc.PingServiceStub(bare_channel)
    to_chain = ping_pb2_grpc.PingServiceStub(chain_channel)
    unsampled = (("traceparent", TRACE.format(flags="00")),)
    sampled = (("traceparent", TRACE.format(flags="01")),)
    modes: dict[str, tuple[Call, Server]] = {
        "bare": (functools.partial(to_bare.Ping, metadata=unsampled), bare_server),
        "mesh": (functools.partial(to_chain.Ping, metadata=unsampled), chain_server),
        "mesh+tr": (functools.partial(to_chain.Ping, metadata=sampled), chain_server),
    }
    channels = [bare_channel, chain_channel]
    if before_server is not None:  # the chain before issue 15, side by side
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{before_server.port}"))
        to_before = ping_pb2_grpc.PingServiceStub(channels[-1])
        await to_before.Ping(ping_pb2.PingRequest(), timeout=10)
        modes["before"] = (functools.partial(to_before.Ping, metadata=unsampled), before_server)
    if interceptors_server is not None:
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{interceptors_server.port}"))
        to_int = ping_pb2_grpc.PingServiceStub(channels[-1])
        await to_int.Ping(ping_pb2.PingRequest(), timeout=10)
        mesh_int = functools.partial(to_int.Ping, metadata=unsampled)
        modes["mesh-int"] = (mesh_int, interceptors_server)
    for stub in (to_bare, to_chain):
        await stub.Ping(ping_pb2.PingRequest(), timeout=10)
    _print_header(
        f"\nserver side: a bare client; the server bare or with the mesh chain; {rounds} x"
        f" {seconds / rounds:.1f}s turns per mode and level (cpu/bare: server CPU)"
    )
    out = await _turns(modes, levels, seconds, rounds, lambda r: r.server_cpu_us)
    for channel in channels:
        await channel.close(None)
    return out


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


def _tls_channel(port: int, identity: MeshIdentity) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        identity.channel_credentials(),
        options=[*identity.channel_options("ping"), ("grpc.use_local_subchannel_pool", 1)],
    )


async def compare_tls(
    plain: Server, levels: Sequence[int], seconds: float, rounds: int, log_level: str
) -> None:
    """Plaintext vs mTLS, bare and mesh, client and server CPU (servers in child processes)."""
    with tempfile.TemporaryDirectory(prefix="bench-pki-") as tmp:
        security = SecuritySettings(pki_dir=str(Path(tmp) / "pki"))
        PkiStore(security).init_ca()
        client_id = MeshIdentity.load("bench-client", security)
        tls_bare = start_server(pki_dir=security.pki_dir)
        chain_plain = start_server(chain=True, log_level=log_level)
        chain_tls = start_server(chain=True, log_level=log_level, pki_dir=security.pki_dir)
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{plain.port}"),
            _tls_channel(tls_bare.port, client_id),
        ]
        rt_plain = await mesh_runtime(chain_plain.port, tracer(False))
        rt_tls = await mesh_runtime(chain_tls.port, tracer(False), security)
        try:
            bare_plain, bare_tls = (ping_pb2_grpc.PingServiceStub(c) for c in channels)
            mesh_plain = await rt_plain.connect("ping", ping_pb2_grpc.PingServiceStub)
            mesh_tls = await rt_tls.connect("ping", ping_pb2_grpc.PingServiceStub)
            modes: dict[str, tuple[Call, Server]] = {
                "plain": (bare_plain.Ping, plain),
                "tls": (bare_tls.Ping, tls_bare),
                "mesh": (mesh_plain.Ping, chain_plain),
                "mesh+tls": (mesh_tls.Ping, chain_tls),
            }
            for stub in (bare_plain, bare_tls, mesh_plain, mesh_tls):
                await stub.Ping(ping_pb2.PingRequest(), timeout=10)
            _print_header(
                f"\nmTLS: client and server, plaintext vs mutual TLS; {rounds} x"
                f" {seconds / rounds:.1f}s turns (cpu/bare: client + server CPU vs plain)"
            )
            await _turns(modes, levels, seconds, rounds, lambda r: r.cpu_us + r.server_cpu_us)
            await handshakes(plain.port, tls_bare.port, client_id)
        finally:
            for ch in channels:
                await ch.close(None)
            await rt_plain.close()
            await rt_tls.close()
            for server in (tls_bare, chain_plain, chain_tls):
                server.stop()


async def handshakes(plain_port: int, tls_port: int, identity: MeshIdentity, n: int = 150) -> None:
    """New connection + one Ping, `n` times in a row: the handshake's cost per connection."""
    request = ping_pb2.PingRequest(value="hs")

    async def run(make: Callable[[], grpc.aio.Channel]) -> tuple[float, float]:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            channel = make()
            await ping_pb2_grpc.PingServiceStub(channel).Ping(request, timeout=10)
            await channel.close(None)
        return (time.perf_counter() - t0) / n * 1e3, (time.process_time() - cpu0) / n * 1e3

    def plain() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            f"127.0.0.1:{plain_port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )

    def tls() -> grpc.aio.Channel:
        return _tls_channel(tls_port, identity)

    await run(plain)  # warm-up
    p_wall, p_cpu = await run(plain)
    t_wall, t_cpu = await run(tls)
    print(f"\nnew connection + first call, {n} in a row (client side):")
    print(f"  plaintext {p_wall:6.2f} ms wall {p_cpu:6.2f} ms CPU")
    print(f"  mTLS      {t_wall:6.2f} ms wall {t_cpu:6.2f} ms CPU")
    print(f"  handshake +{t_wall - p_wall:.2f} ms wall, +{t_cpu - p_cpu:.2f} ms client CPU")


async def server_side(
    levels: Sequence[int],
    seconds: float,
    rounds: int,
    log_level: str = "INFO",
    *,
    before: bool = False,
) -> dict[int, dict[str, Result]]:
    """Only the server-side comparison (bare server vs the mesh chain), its own servers;
    `before`: also the chain as it was before issue 15 (mode "before", unsampled)."""
    bare_server = start_server()
    chain_server = start_server(chain=True, log_level=log_level)
    before_server = start_server(chain=True, log_level=log_level, before=True) if before else None
    int_server = start_server(chain=True, log_level=log_level, registered=False) if before else None
    try:
        return await compare_servers(
            bare_server, chain_server, levels, seconds, rounds, before_server, int_server
        )
    finally:
        for server in (bare_server, chain_server, before_server, int_server):
            if server is not None:
                server.stop()


async def main(
    levels: Sequence[int],
    seconds: float,
    rounds: int,
    network_breakdown: bool,
    server_log_level: str,
    tls_only: bool = False,
    server_only: bool = False,
) -> None:
    if server_only:
        await server_side(levels, seconds, rounds, server_log_level, before=True)
        return
    bare_server = start_server()
    if tls_only:
        try:
            await compare_tls(bare_server, levels, seconds, rounds, server_log_level)
        finally:
            bare_server.stop()
        return
    chain_server = start_server(chain=True, log_level=server_log_level)
    try:
        await compare(bare_server, levels, seconds, rounds)
        await compare_servers(bare_server, chain_server, levels, seconds, rounds)
        costs = {n: pick_cost_us(n) for n in (3, 20)}
        print("\npicker cost per pick (us):")
        for n, c in costs.items():
            print(f"  {n:>2} instances: round_robin {c['round_robin']:.3f}, p2c {c['p2c']:.3f}")
        _print_steps(
            "\nclient chain CPU per call without gRPC/network (fake calls, us):",
            await chain_costs(),
        )
        _print_steps(
            "\nserver chain CPU per call without gRPC/network (fake context, us):",
            await server_chain_costs(server_log_level),
        )
        if network_breakdown:
            await breakdown(bare_server.port, max(1.0, seconds / 2), 16)
        await compare_tls(bare_server, levels, seconds, rounds, server_log_level)
    finally:
        bare_server.stop()
        chain_server.stop()


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
        "--server-log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the mesh server's access log level (INFO, the services' default, logs every call)",
    )
    p.add_argument(
        "--network-breakdown",
        action="store_true",
        help="also measure CPU per call over the network as the chain grows (noisy)",
    )
    p.add_argument("--tls-only", action="store_true", help="only the mTLS comparison")
    p.add_argument("--server-only", action="store_true", help="only the server-side comparison")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    asyncio.run(
        main(
            levels,
            a.seconds,
            max(1, a.rounds),
            a.network_breakdown,
            a.server_log_level,
            a.tls_only,
            a.server_only,
        )
    )


if __name__ == "__main__":
    cli()
