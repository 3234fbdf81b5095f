"""Subscribe to the shop's events: a durable JetStream consumer of `user.created`.

It runs against `make run` as it is: `meshctl up`'s NATS admits only the identities
mesh.toml names (`services/common/event_identities.py`), and this script is one of
them, `event-subscriber-example`, allowed the durable consumer
`event-subscriber-example` of `user.created` and nothing else. It finds the running
mesh's NATS and its own credentials in the run directory (`--run-dir`, default
`.run`), as `meshctl events tail` finds its own; with NATS_URL set (and
NATS_NKEY_SEED_FILE or NATS_CREDS_FILE if your server asks) it uses your server
instead.

The envelope is the mesh's (`meshproto.events.v1.Envelope`); the payload types are the
shop's (`services.common.event_types.EVENTS`). Each event arrives at least once (a
handler that raises gets it again after a backoff); the durable consumer remembers
where it stopped, so a restarted subscriber carries on from there. `--count N` stops
after N events.

    python examples/event_subscriber.py [--run-dir .run] [--count 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from google.protobuf import json_format
from meshproto.events.v1.envelope_pb2 import Envelope

from mesh.events import EventBus
from mesh.events.errors import EventsTimeoutError
from mesh.events.nats_auth import stream_for
from mesh.events.streams import ensure_streams
from mesh.local.nats import nats_env
from mesh.settings import Settings
from services.common.event_types import EVENTS
from services.common.events import bus_access

IDENTITY = "event-subscriber-example"


def settings_for(run_dir: Path) -> Settings | None:
    """This script's settings: the user's NATS_URL, else the running mesh's NATS and
    this identity's seed (None: neither)."""
    env = nats_env(os.environ, run_dir, IDENTITY)
    return Settings.from_env(IDENTITY, env) if env.get("NATS_URL") else None


async def main(settings: Settings, subject: str, count: int, durable: str) -> None:
    access = bus_access(settings)
    bus = await EventBus.connect(
        settings.nats_url, name=IDENTITY, auth=access.auth, streams=access.streams
    )
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
        await ensure_streams(bus.js, access.declares)  # only its own: the dead letters'
        # The stream named, not looked up: the identity may not list streams.
        stream = stream_for(subject, access.streams).name
        await bus.subscribe(subject, handle, durable=durable, stream=stream)
        print(f"subscribed to {subject} as {durable}", flush=True)
        await done.wait()
    finally:
        await bus.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path(".run"))
    parser.add_argument("--subject", default="user.created")
    parser.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    parser.add_argument("--durable", default=IDENTITY)
    args = parser.parse_args()
    found = settings_for(args.run_dir)
    if found is None:
        sys.exit(
            f"no mesh is running in {args.run_dir} (`make run` starts one), and NATS_URL is not set"
        )
    try:
        asyncio.run(main(found, args.subject, args.count, args.durable))
    except EventsTimeoutError as exc:
        sys.exit(
            f"{exc}: the server refused it or did not answer; under `make run`, "
            f"{IDENTITY} may only consume user.created as {IDENTITY}"
            " (services/common/event_identities.py)"
        )
