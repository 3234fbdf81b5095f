"""Events end to end: outbox (SQLite) -> relay -> JetStream -> idempotent consumer (SQLite).

Run: `python -m bench.events [--events N] [--producers P]`. Starts its own
nats-server (tests/support/nats.py). Two services' databases, as in the shop: a
producer whose transactions each insert one outbox row, and a consumer whose
handler applies each event through the inbox in its own transaction. Prints
throughput (first commit to last handled), commit-to-handle latency p50/p99 at
full speed, then p50/p99 with the producer paced at half that rate.

Defaults: 4 producers committing 50 events per transaction, so the producers'
own SQLite commits are not what limits the pipeline under test (with one
producer and 20 events per transaction the producer tops out near 3,000
events/s on a 2-core box and the figure measures SQLite, not the relay).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.events import (
    EventBus,
    Inbox,
    Outbox,
    RelayConfig,
    SubscribeOptions,
    inbox_migrations,
    new_envelope,
    outbox_migrations,
)
from services.common.event_types import EVENTS, shop_streams
from tests.support.nats import nats_server

THINGS = Migration(1, "things", ("CREATE TABLE things (id VARCHAR(64) PRIMARY KEY, n INTEGER)",))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run_phase(
    n: int,
    producers: int,
    per_tx: int,
    batch: bool,
    rate: float | None,
    base: Path,
    url: str,
    tag: str,
) -> tuple[float, list[float]]:
    prod_engine = create_engine(f"sqlite+aiosqlite:///{base / f'producer-{tag}.db'}")
    cons_engine = create_engine(f"sqlite+aiosqlite:///{base / f'consumer-{tag}.db'}")
    await migrate(prod_engine, outbox_migrations())
    await migrate(cons_engine, [THINGS, *inbox_migrations()])
    prod_sessions, cons_sessions = session_factory(prod_engine), session_factory(cons_engine)
    outbox = Outbox()
    bus = await EventBus.connect(url, name=f"bench-{tag}", streams=shop_streams())
    await bus.ensure_streams()
    await bus.js.purge_stream("USER")  # each phase starts from an empty stream

    committed: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    inbox = Inbox(cons_sessions, f"bench-{tag}")

    async def apply(env: Envelope, session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO things (id, n) VALUES (:i, 1)"), {"i": env.id})

    async def apply_many(envs: list[Envelope], session: AsyncSession) -> None:
        await session.execute(
            text("INSERT INTO things (id, n) VALUES (:i, 1)"), [{"i": e.id} for e in envs]
        )

    idempotent = inbox.idempotent(apply)
    idempotent_batch = inbox.idempotent_batch(apply_many)

    async def batch_handler(envs: list[Envelope]) -> None:
        await idempotent_batch(envs)
        now = time.perf_counter()
        latencies.extend(now - committed[e.id] for e in envs)
        if len(latencies) >= n:
            done.set()

    async def handler(env: Envelope) -> None:
        await idempotent(env)
        latencies.append(time.perf_counter() - committed[env.id])
        if len(latencies) >= n:
            done.set()

    await bus.subscribe(
        "user.*",
        handler,
        durable=f"bench-{tag}",
        options=SubscribeOptions(),
        batch_handler=batch_handler if batch else None,
    )
    bus.relay(prod_sessions, outbox, config=RelayConfig()).start()

    envs = [
        new_envelope(
            events_pb2.UserCreated(user_id=str(i), email=f"{i}@x"),
            types=EVENTS,
            source="b",
            subject=str(i),
        )
        for i in range(n)
    ]
    per = n // producers
    start = time.perf_counter()

    async def produce(k: int) -> None:
        mine = envs[k * per : (k + 1) * per]
        for j in range(0, len(mine), per_tx):
            chunk = mine[j : j + per_tx]
            if rate is not None:
                due = start + (j * producers + k * per_tx) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
            async with prod_sessions.begin() as s:
                await outbox.add_many(s, chunk)
                # Stamped just before the commit: the relay may run before we resume.
                t = time.perf_counter()
                for env in chunk:
                    committed[env.id] = t

    await asyncio.gather(*(produce(k) for k in range(producers)))
    produced_in = time.perf_counter() - start
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    await bus.close()
    await prod_engine.dispose()
    await cons_engine.dispose()
    print(f"  [{tag}] produced (committed) in {produced_in:.2f}s, handled all in {elapsed:.2f}s")
    return elapsed, latencies


async def main(n: int, producers: int, per_tx: int, batch: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        base = Path(tmp)
        async with nats_server(base / "nats") as srv:
            elapsed, lat = await run_phase(n, producers, per_tx, batch, None, base, srv.url, "full")
            rate = n / elapsed
            print(
                f"full speed : {rate:8.0f} events/s end to end ({n} events, {producers} producers,"
                f" {per_tx} events/tx, consumer {'batch' if batch else 'per-event'} tx)"
            )
            print(
                f"             commit->handle p50 {pct(lat, 50) * 1e3:6.1f} ms"
                f"  p99 {pct(lat, 99) * 1e3:6.1f} ms"
            )
            _, lat2 = await run_phase(n, producers, per_tx, batch, rate / 2, base, srv.url, "half")
            print(f"half rate  : {rate / 2:8.0f} events/s paced")
            print(
                f"             commit->handle p50 {pct(lat2, 50) * 1e3:6.1f} ms"
                f"  p99 {pct(lat2, 99) * 1e3:6.1f} ms"
                f"  (mean {statistics.mean(lat2) * 1e3:.1f} ms)"
            )


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--producers", type=int, default=4)
    p.add_argument("--per-tx", type=int, default=50, help="events per producer transaction")
    p.add_argument("--per-event", action="store_true", help="consumer: one transaction per event")
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(a.events, a.producers, a.per_tx, not a.per_event))


if __name__ == "__main__":
    cli()
