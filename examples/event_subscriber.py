"""Subscribe to the shop's events: a durable JetStream consumer of `user.*`.

The envelope is the mesh's (`meshproto.events.v1.Envelope`); the payload types are the
shop's (`services.common.event_types.EVENTS`). Against `make run`'s own NATS, which
admits only the identities mesh.toml names, run it with credentials that may create
a durable consumer (NATS_URL of your own server, or a user you add). Each event
arrives at least once (a handler that raises gets it again after a
backoff); the durable consumer remembers where it stopped, so a restarted
subscriber carries on from there. `--count N` stops after N events.

    python examples/event_subscriber.py [--nats nats://127.0.0.1:4222] [--count 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os

from google.protobuf import json_format
from meshproto.events.v1.envelope_pb2 import Envelope

from mesh.events import EventBus
from services.common.event_types import EVENTS, shop_streams


async def main(nats_url: str, subject: str, count: int, durable: str) -> None:
    bus = await EventBus.connect(nats_url, name="example-subscriber", streams=shop_streams())
    done = asyncio.Event()
    seen = 0

    async def handle(env: Envelope) -> None:
        nonlocal seen
        payload = json_format.MessageToDict(EVENTS.payload(env), preserving_proto_field_name=True)
        print(f"{env.type} id={env.id} source={env.source} {payload}", flush=True)
        seen += 1
        if count and seen >= count:
            done.set()

    try:
        await bus.ensure_streams()
        await bus.subscribe(subject, handle, durable=durable)
        print(f"subscribed to {subject} on {nats_url} as {durable}", flush=True)
        await done.wait()
    finally:
        await bus.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--subject", default="user.*")
    parser.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    parser.add_argument("--durable", default="example-subscriber")
    args = parser.parse_args()
    asyncio.run(main(args.nats, args.subject, args.count, args.durable))
