"""`notes`: writes 20 notes at start, then a tick every 0.2 s; each note's `note.created`
event commits with it (the outbox) and the mesh's publisher relays it to JetStream.

`python -m notes.server`, run by `meshctl up` from the project's directory."""

from __future__ import annotations

import asyncio
import logging

from google.protobuf.wrappers_pb2 import StringValue

from mesh.client.runtime import MeshRuntime
from mesh.db import session_factory
from mesh.events import Outbox, new_envelope, outbox_migrations
from mesh.events.service import EventPublisher, bus_access
from mesh.server import ServiceDefinition, run_service
from mesh.service_db import prepare_database, service_engine
from mesh.settings import Settings
from notes.events import EVENTS, IDENTITIES

log = logging.getLogger("notes")
NOTES = 20


async def build(settings: Settings, runtime: MeshRuntime) -> ServiceDefinition:
    engine = service_engine(settings)  # NOTES_DATABASE_URL, else <data dir>/notes.db
    await prepare_database(engine, outbox_migrations())
    sessions = session_factory(engine, serial_writes=True)
    outbox = Outbox()
    publisher = EventPublisher(
        settings.nats_url, sessions, outbox, name=settings.instance_id,
        holder=settings.instance_id, access=bus_access(settings, EVENTS.domains, IDENTITIES),
    )  # fmt: skip
    tasks: list[asyncio.Task[None]] = []

    async def note(text: str, number: int) -> None:
        async with sessions.begin() as session:  # the note's event commits with it
            envelope = new_envelope(
                StringValue(value=text), types=EVENTS, source="notes", subject=str(number)
            )
            await outbox.add(session, envelope)

    async def write() -> None:
        for i in range(NOTES):
            await note(f"note {i}", i)
            await asyncio.sleep(0.02)  # the pace of the notes
        log.info("wrote %d notes", NOTES)
        tick = 0
        while True:  # then a tick now and then, for `meshctl events tail` to see live
            tick += 1
            await note(f"tick {tick}", tick)
            await asyncio.sleep(0.2)  # the pace of the ticks

    async def start() -> None:
        await publisher.start()
        tasks.append(asyncio.create_task(write()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await publisher.stop()
        await engine.dispose()

    return ServiceDefinition(
        name="notes", servicers=[], service_names=[], checks=[publisher.check()],
        on_start=[start], on_stop=[stop],
    )  # fmt: skip


if __name__ == "__main__":
    run_service("notes", build, grpc_port=0, admin_port=0)
