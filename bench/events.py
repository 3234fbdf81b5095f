"""Events end to end, producer and consumer in their own processes, as in the shop.

Run: `python -m bench events [--events N] [--lag-stop-s 10]`. Starts its own
nats-server (tests/support/nats.py, never the machine's 4222) and, per phase, a
producer service process and a consumer service process (`bench.events_proc`):
outbox (SQLite, one transaction per `per_tx` events) -> outbox relay -> JetStream ->
durable pull consumer -> inbox (SQLite, one transaction per fetched batch).

Phases:
1. full speed: the producer commits N events flat out; events/s = N / (first
   commit -> last handled), plus commit -> handled p50/p99 (queueing included).
2. half rate: the producer paced at half the full-speed rate; commit -> handled
   p50/p99, the latency a consumer sees when the pipeline is not saturated.
3. lag: paced at half rate; the consumer process is stopped (SIGTERM) for
   `--lag-stop-s` seconds while production goes on, then a new consumer process
   (same durable, same database) catches up: the drain rate is what it handled
   per second until it caught up, reported against the produce rate.

Every event is checked as handled exactly once in the consumer's database (the
inbox dedupes redeliveries). `headline_events(duration_s)` is what `bench summary`
calls. CPU seconds per process come from each process's own rusage: in all
(`cpu_s_per_1k`, start-up included) and after start-up (`work_cpu_s_per_1k`, the
steadier per-event figure: imports and connecting cost about a second per process).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats

from tests.support.nats import nats_server

_PROC = [sys.executable, "-m", "bench.events_proc"]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def _stamps(path: Path) -> dict[str, float]:
    """Event id -> earliest stamp (a redelivered event is stamped again; the first counts)."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        i, t = line.split(" ")
        v = float(t)
        if i not in out or v < out[i]:
            out[i] = v
    return out


@dataclass
class Phase:
    events: int
    elapsed_s: float  # first commit -> last handled
    lat_ms: list[float]
    producer: dict[str, Any]
    consumers: list[dict[str, Any]]
    handled_once: bool
    drain_per_s: float = 0.0
    backlog: int = 0

    @property
    def per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *_PROC, *args, stdout=asyncio.subprocess.PIPE, stderr=None
    )


async def _last_json(proc: asyncio.subprocess.Process, within_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    out, _ = await asyncio.wait_for(proc.communicate(), within_s)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench.events_proc failed ({proc.returncode}): {out.decode()[-2000:]}")
    return dict(json.loads(lines[-1]))


async def _wait_ready(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if b"ready" not in line:
        raise RuntimeError(f"consumer did not start: {line!r}")


async def _purge(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):  # made by the first producer
            await js.purge_stream("USER")
    finally:
        await nc.close()


def _handled_once(db: Path, ids: set[str]) -> bool:
    with sqlite3.connect(db) as c:
        rows = [r[0] for r in c.execute("SELECT id FROM things")]
    return len(rows) == len(set(rows)) and set(rows) == ids


async def run_phase(
    url: str, base: Path, tag: str, n: int, *, rate: float, per_tx: int, producers: int,
    stop_s: float = 0.0, batch: int = 256,
) -> Phase:  # fmt: skip
    """One producer process and one consumer process (two in turn when `stop_s`)."""
    await _purge(url)
    pdb, cdb = base / f"producer-{tag}.db", base / f"consumer-{tag}.db"
    pst, cst = base / f"produced-{tag}.txt", base / f"handled-{tag}.txt"
    common = ["--url", url, "--stamps", str(cst), "--db", str(cdb), "--durable", f"bench-{tag}"]
    consumer = await _spawn("consumer", *common, "--expect", str(n), "--batch", str(batch))
    await _wait_ready(consumer)
    producer = await _spawn(
        "producer", "--url", url, "--db", str(pdb), "--stamps", str(pst), "--tag", tag,
        "--events", str(n), "--producers", str(producers), "--per-tx", str(per_tx),
        "--rate", str(rate),
    )  # fmt: skip
    consumers: list[dict[str, Any]] = []
    backlog, drain = 0, 0.0
    if stop_s:
        # Let it run a while at rate, stop the consumer, wait, start another, time the catch-up.
        await asyncio.sleep(min(3.0, n / rate / 4))  # steady state before the stop
        consumer.terminate()
        consumers.append(await _last_json(consumer, 60))
        await asyncio.sleep(stop_s)  # the outage being measured
        consumer = await _spawn("consumer", *common, "--expect", "0", "--batch", str(batch))
        await _wait_ready(consumer)
        restarted = time.monotonic()
    prod = await _last_json(producer, 600)
    if stop_s:
        # The producer is done; wait until the consumer has handled everything.
        deadline = time.monotonic() + 120
        cdb_ids = 0
        while time.monotonic() < deadline:  # poll the consumer's database
            with sqlite3.connect(cdb) as c:
                cdb_ids = c.execute("SELECT count(*) FROM things").fetchone()[0]
            if cdb_ids >= n:
                break
            await asyncio.sleep(0.2)
        consumer.terminate()
    consumers.append(await _last_json(consumer, 120))
    produced, handled = _stamps(pst), _stamps(cst)
    if stop_s:
        backlog, drain = _drain(produced, handled, restarted)
    lat = [(handled[i] - t) * 1e3 for i, t in produced.items() if i in handled]
    elapsed = max(handled.values()) - min(produced.values()) if handled else 0.0
    return Phase(n, elapsed, lat, prod, consumers, _handled_once(cdb, set(produced)),
                 drain, backlog)  # fmt: skip


def _drain(
    produced: dict[str, float], handled: dict[str, float], restarted: float
) -> tuple[int, float]:
    """(backlog at the restart, events/s the restarted consumer handled until it caught up).

    Caught up: the first moment t after the restart by which every event committed
    before t - 0.5 s was handled (half a second of normal commit -> handled latency)."""
    commits = sorted(produced.values())
    h_by_commit = [handled.get(i, float("inf")) for i, _ in
                   sorted(produced.items(), key=lambda kv: kv[1])]  # fmt: skip
    prefix_max: list[float] = []
    m = float("-inf")
    for h in h_by_commit:
        m = max(m, h)
        prefix_max.append(m)
    backlog = bisect.bisect_left(commits, restarted) - sum(
        1 for t in handled.values() if t < restarted
    )
    after = sorted(t for t in handled.values() if t >= restarted)
    for k, t in enumerate(after):
        j = bisect.bisect_left(commits, t - 0.5)
        if (j == 0 or prefix_max[j - 1] <= t) and t - restarted > 0.5:
            return backlog, (k + 1) / (t - restarted)
    return backlog, 0.0


def _work_cpu(counters: dict[str, Any]) -> float:
    """CPU seconds after start-up (a process predating `cpu_start_s` counts it all)."""
    return float(counters["cpu_s"]) - float(counters.get("cpu_start_s", 0.0))


async def measure(
    n: int, *, per_tx: int, producers: int, lag_stop_s: float, batch: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        base = Path(tmp)
        async with nats_server(base / "nats") as srv:
            full = await run_phase(srv.url, base, "full", n, rate=0.0, per_tx=per_tx,
                                   producers=producers, batch=batch)  # fmt: skip
            half_rate = full.per_s / 2
            half = await run_phase(srv.url, base, "half", n, rate=half_rate, per_tx=per_tx,
                                   producers=producers, batch=batch)  # fmt: skip
            out: dict[str, Any] = {
                "events_per_s": round(full.per_s),
                "full_p50_ms": round(pct(full.lat_ms, 50), 1),
                "full_p99_ms": round(pct(full.lat_ms, 99), 1),
                "half_rate_per_s": round(half_rate),
                "half_p50_ms": round(pct(half.lat_ms, 50), 1),
                "half_p99_ms": round(pct(half.lat_ms, 99), 1),
                "exactly_once": full.handled_once and half.handled_once,
                "cpu_s_per_1k": {
                    "producer": round(full.producer["cpu_s"] / n * 1000, 3),
                    "consumer": round(sum(c["cpu_s"] for c in full.consumers) / n * 1000, 3),
                },
                "work_cpu_s_per_1k": {
                    "producer": round(_work_cpu(full.producer) / n * 1000, 3),
                    "consumer": round(sum(_work_cpu(c) for c in full.consumers) / n * 1000, 3),
                },
            }
            if lag_stop_s:
                # Enough events to produce through the stop and the catch-up: 3 s of
                # steady state, the stop, a second or two to start the new consumer,
                # then the backlog drained at 2x the produce rate (the goal) in about
                # as long again, with room to spare; 30 s at the default 10 s stop.
                lag_n = int(half_rate * (2 * lag_stop_s + 10))
                lag = await run_phase(
                    srv.url, base, "lag", lag_n, rate=half_rate, per_tx=per_tx,
                    producers=producers, stop_s=lag_stop_s, batch=batch,
                )  # fmt: skip
                out.update({
                    "lag_stop_s": lag_stop_s,
                    "lag_backlog": lag.backlog,
                    "lag_drain_per_s": round(lag.drain_per_s),
                    "lag_drain_vs_produce": round(lag.drain_per_s / half_rate, 2),
                })  # fmt: skip
                out["exactly_once"] = out["exactly_once"] and lag.handled_once
            return out


async def headline_events(duration_s: float = 10.0) -> dict[str, Any]:
    """For `bench summary`: full speed and half rate over about `duration_s` seconds in all
    (no lag phase): {"events_per_s", "half_p99_ms", ...}."""
    n = max(1000, int(duration_s * 1500))
    return await measure(n, per_tx=50, producers=4, lag_stop_s=0.0, batch=256)


def report(r: dict[str, Any], n: int) -> None:
    print(f"full speed : {r['events_per_s']:8d} events/s end to end ({n} events;"
          f" p50 {r['full_p50_ms']} ms, p99 {r['full_p99_ms']} ms commit->handled)")  # fmt: skip
    print(f"half rate  : {r['half_rate_per_s']:8d} events/s paced; commit->handled"
          f" p50 {r['half_p50_ms']} ms, p99 {r['half_p99_ms']} ms")  # fmt: skip
    if "lag_drain_per_s" in r:
        print(f"lag        : consumer stopped {r['lag_stop_s']} s ({r['lag_backlog']} behind);"
              f" drained at {r['lag_drain_per_s']} events/s ="
              f" {r['lag_drain_vs_produce']}x the produce rate")  # fmt: skip
    print(f"exactly once in the consumer's database: {r['exactly_once']};"
          f" CPU s per 1,000 events: {r['cpu_s_per_1k']},"
          f" after start-up: {r['work_cpu_s_per_1k']}")  # fmt: skip
    print(json.dumps(r))


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--producers", type=int, default=4, help="committing coroutines")
    p.add_argument("--per-tx", type=int, default=50, help="events per producer transaction")
    p.add_argument("--batch", type=int, default=256, help="consumer fetch batch")
    p.add_argument("--lag-stop-s", type=float, default=10.0, help="0: no lag phase")
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    r = asyncio.run(measure(a.events, per_tx=a.per_tx, producers=a.producers,
                            lag_stop_s=a.lag_stop_s, batch=a.batch))  # fmt: skip
    report(r, a.events)


if __name__ == "__main__":
    cli()


async def headline(budget: Any) -> dict[str, Any]:
    """`bench summary`'s entry (bench/summary.py `HEADLINES`): `headline_events` sized by
    the summary's budget (a smoke budget: a few thousand events)."""
    return await headline_events(2.0 if getattr(budget, "smoke", False) else 10.0)
