"""What each private-API read of `interceptors/_fastpath.py` saves over its public fallback.

Run: `python -m bench fastpath [--number N]`. Each line times one use both ways
on real objects (a finished grpc.aio call from a ping server in a child
process, prometheus children, an SDK tracer), in microseconds per use (best
of five `timeit` runs), then the mesh client chain (`bench.rpc.chain_costs`,
full chain, tracing sampled off) with the fast path on and forced off. The
figures cited in `_fastpath`'s docstring and the README come from here.
"""

from __future__ import annotations

import argparse
import asyncio
import timeit
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath
from interceptors._spans import SpanShortcut


def _us(fn: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _line(name: str, private: float, public: float) -> None:
    saved = public - private
    print(f"{name:<34} private {private:7.3f} µs   public {public:7.3f} µs   saves {saved:6.3f} µs")


async def _finished_call(port: int) -> Any:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = ping_pb2_grpc.PingServiceStub(channel).Ping(ping_pb2.PingRequest())
    await call
    return channel, call


async def _task_status_us(call: Any, n: int) -> float:
    async def read() -> tuple[grpc.StatusCode, str]:
        code = await call.code()
        return code, await call.details()

    best = float("inf")
    loop = asyncio.get_running_loop()
    for _ in range(5):
        t = loop.time()
        await asyncio.gather(*(asyncio.ensure_future(read()) for _ in range(n)))
        best = min(best, (loop.time() - t) / n * 1e6)
    return best


async def grpc_uses(number: int) -> None:
    from bench.rpc import start_server

    server = start_server()
    try:
        channel, call = await _finished_call(server.port)
        private = _us(lambda: _fastpath._private_status_now(call), number)
        stepped = _us(
            lambda: (_fastpath._step(call.code()), _fastpath._step(call.details())), number
        )
        task = await _task_status_us(call, number // 10)
        _line("status: _cython_call._status", private, task)
        _line("status: coroutines stepped", stepped, task)
        types = _fastpath._grpc_call_types()
        kind = grpc.aio.UnaryUnaryCall
        _line(
            "call type: grpc.aio._call classes",
            _us(lambda: type(call) in types, number),
            _us(lambda: isinstance(call, kind), number),
        )
        await channel.close()
    finally:
        server.stop()


def prometheus_uses(number: int) -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["l"], registry=registry).labels("x")
    histogram = Histogram("h", "h", ["l"], registry=registry).labels("x")
    raw_inc = _fastpath._private_counter_inc(counter)
    _line(
        "counter: _value.inc", _us(lambda: raw_inc(1), number), _us(lambda: counter.inc(1), number)
    )
    raw = _fastpath._private_histogram_raw(histogram)
    assert raw is not None
    total, buckets, bounds = raw
    from bisect import bisect_left

    def raw_observe() -> None:
        total(0.0007)
        buckets[bisect_left(bounds, 0.0007)](1)

    _line(
        "histogram: _sum/_buckets",
        _us(raw_observe, number),
        _us(lambda: histogram.observe(0.0007), number),
    )


def otel_uses(number: int) -> None:
    tracer = TracerProvider(sampler=sampling.ParentBased(sampling.ALWAYS_OFF)).get_tracer("b")
    shortcut = SpanShortcut(tracer)
    assert shortcut.active

    def sdk() -> None:
        tracer.start_span("x", kind=SpanKind.CLIENT).end()

    _line(
        "unsampled span: sampler internals",
        _us(lambda: shortcut.drop(INVALID_SPAN_CONTEXT), number),
        _us(sdk, number),
    )

    # A sampled span as the tracing interceptors use it (start with attributes, status
    # code set, end), into a batch processor whose exporter drops the spans.
    from bench.rpc import tracer as sampled_provider

    traced = sampled_provider(True).get_tracer("b")
    attributes = {"rpc.system": "grpc", "rpc.service": "S", "rpc.method": "M"}
    ways: dict[bool, float] = {}
    for lean in (True, False):
        spans = SpanShortcut(traced)
        if not lean:
            spans._parts = None  # the SDK's start_span

        def one(spans: SpanShortcut = spans) -> None:
            spans.drop(INVALID_SPAN_CONTEXT)
            span = spans.start_span(
                "S/M", INVALID_SPAN_CONTEXT, SpanKind.SERVER, attributes, remote=True
            )
            span.set_attribute("rpc.grpc.status_code", 0)
            span.end()

        ways[lean] = _us(one, max(1, number // 5))
    _line("sampled span: LeanSpan vs the SDK's", ways[True], ways[False])


async def chain(calls: int) -> None:
    from bench.rpc import chain_costs

    full: dict[bool, float] = {}
    for enabled in (True, False):
        _fastpath.use_fastpath(enabled)
        steps = await chain_costs(calls)
        full[enabled] = dict(steps)["+ metrics"]
    _fastpath.use_fastpath(True)
    _line("client chain (full, tracing off)", full[True], full[False])


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench fastpath", description=__doc__)
    parser.add_argument("--number", type=int, default=100_000, help="uses timed per run")
    parser.add_argument("--calls", type=int, default=20_000, help="chain calls per mode")
    args = parser.parse_args(argv)
    print(f"fast path capable: {_fastpath.CAPABLE}")
    asyncio.run(grpc_uses(args.number))
    prometheus_uses(args.number)
    otel_uses(args.number)
    asyncio.run(chain(args.calls))


if __name__ == "__main__":
    cli()
