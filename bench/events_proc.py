"""The two processes of `bench.events`: a producer service and a consumer service.

`python -m bench.events_proc producer ...` is a service that owns a SQLite database:
its coroutines commit outbox rows (`per_tx` events per transaction) at a paced
rate or flat out, and its outbox relay (the one every shop service runs) publishes
them to JetStream. `python -m bench.events_proc consumer ...` is another service
with its own SQLite database: a durable pull consumer whose batch handler applies
each event through the inbox (`Inbox.idempotent_batch`, one transaction per
fetched batch), as the shop's consumers do.

Both write `<event id> <time>` lines (CLOCK_MONOTONIC, which every process on the
machine shares) to a stamps file: the producer when the event's transaction is
about to commit, the consumer when the event's transaction has committed. The
orchestrator (`bench.events`) joins them. Each process prints one JSON line of
counters on exit, with its CPU seconds in all and at start-up (when it was ready to
work: the orchestrator tells the per-event cost from the imports); the consumer
exits once it has handled `--expect` events, or on SIGTERM (after letting its batch
in hand finish).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import signal
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

THINGS = Migration(1, "things", ("CREATE TABLE things (id VARCHAR(64) PRIMARY KEY, n INTEGER)",))
SUBJECT = "user.*"


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def producer(a: argparse.Namespace) -> dict[str, float | int]:
    engine = create_engine(f"sqlite+aiosqlite:///{a.db}")
    await migrate(engine, outbox_migrations())
    sessions = session_factory(engine, serial_writes=True)  # one writing process
    outbox = Outbox()
    bus = await EventBus.connect(a.url, name=f"bench-producer-{a.tag}", streams=shop_streams())
    await bus.ensure_streams()
    relay = bus.relay(sessions, outbox, config=RelayConfig())
    relay.start()
    stamps: list[str] = []
    n, per_tx, coros = a.events, a.per_tx, a.producers
    cpu_start = _cpu_s()
    start = time.monotonic()

    async def produce(k: int) -> None:
        # Coroutine k commits transactions k, k + coros, k + 2 coros...: paced, transaction
        # number t is due at start + t * per_tx / rate.
        for t in range(k, (n + per_tx - 1) // per_tx, coros):
            if a.rate:
                delay = start + t * per_tx / a.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
            first = t * per_tx
            chunk = [
                new_envelope(
                    events_pb2.UserCreated(user_id=f"{a.tag}-{i}", email=f"{i}@x"),
                    types=EVENTS,
                    source="bench",
                    subject=f"{a.tag}-{i}",
                )
                for i in range(first, min(first + per_tx, n))
            ]
            async with sessions.begin() as s:
                await outbox.add_many(s, chunk)
                # Stamped just before the commit: the relay may run before we resume.
                now = f" {time.monotonic():.6f}\n"
                stamps.extend(env.id + now for env in chunk)

    await asyncio.gather(*(produce(k) for k in range(coros)))
    committed_s = time.monotonic() - start
    # Wait until the relay has published everything, then stop.
    while relay.published < n:  # noqa: ASYNC110 - polling the relay's counter
        await asyncio.sleep(0.05)
    published_s = time.monotonic() - start
    await asyncio.to_thread(Path(a.stamps).write_text, "".join(stamps))
    await bus.close()
    await engine.dispose()
    return {"committed": len(stamps), "committed_s": committed_s, "published_s": published_s,
            "relay_failures": relay.failures, "cpu_s": _cpu_s(),
            "cpu_start_s": cpu_start}  # fmt: skip


async def consumer(a: argparse.Namespace) -> dict[str, float | int]:
    engine = create_engine(f"sqlite+aiosqlite:///{a.db}")
    await migrate(engine, [THINGS, *inbox_migrations()])
    sessions = session_factory(engine, serial_writes=True)  # one writing process
    inbox = Inbox(sessions, a.durable)
    stamps: list[str] = []
    done = asyncio.Event()
    handled = 0

    async def apply(env: Envelope, session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO things (id, n) VALUES (:i, 1)"), {"i": env.id})

    async def apply_many(envs: list[Envelope], session: AsyncSession) -> None:
        await session.execute(
            text("INSERT INTO things (id, n) VALUES (:i, 1)"), [{"i": e.id} for e in envs]
        )

    one = inbox.idempotent(apply)
    many = inbox.idempotent_batch(apply_many)

    def handled_now(envs: list[Envelope]) -> None:
        nonlocal handled
        now = f" {time.monotonic():.6f}\n"
        stamps.extend(e.id + now for e in envs)
        handled += len(envs)
        if a.expect and handled >= a.expect:
            done.set()

    async def batch_handler(envs: list[Envelope]) -> None:
        await many(envs)
        handled_now(envs)

    async def handler(env: Envelope) -> None:
        await one(env)
        handled_now([env])

    bus = await EventBus.connect(a.url, name=f"bench-consumer-{a.durable}", streams=shop_streams())
    await bus.ensure_streams()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    options = SubscribeOptions(batch=a.batch)
    sub = await bus.subscribe(
        SUBJECT, handler, durable=a.durable, options=options, batch_handler=batch_handler
    )
    cpu_start = _cpu_s()
    print(json.dumps({"ready": True}), flush=True)
    await done.wait()
    await bus.close()  # lets the batch in hand finish
    await asyncio.to_thread(_append, Path(a.stamps), "".join(stamps))
    await engine.dispose()
    return {"handled": handled, "subscription_handled": sub.stats.handled,
            "failed": sub.stats.failed, "cpu_s": _cpu_s(), "cpu_start_s": cpu_start}  # fmt: skip


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("role", choices=["producer", "consumer"])
    p.add_argument("--url", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--stamps", required=True)
    p.add_argument("--tag", default="p")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--producers", type=int, default=4)
    p.add_argument("--per-tx", type=int, default=50)
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = flat out")
    p.add_argument("--durable", default="bench")
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--batch", type=int, default=SubscribeOptions().batch)
    a = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    role = producer if a.role == "producer" else consumer
    print(json.dumps(asyncio.run(role(a))), flush=True)


if __name__ == "__main__":
    cli()
