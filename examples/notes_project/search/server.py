"""`search`: indexes every `note.created` once, through a durable consumer shared by its
instances and its inbox (the handler runs in the inbox's transaction: a redelivered
event has no second effect).

`python -m search.server`, run by `meshctl up` from the project's directory."""

from __future__ import annotations

from meshproto.events.v1.envelope_pb2 import Envelope
from notes.events import EVENTS, IDENTITIES
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.client.runtime import MeshRuntime
from mesh.db import Migration, session_factory
from mesh.events import inbox_migrations
from mesh.events.service import EventSubscriber, SubscriptionSpec, bus_access
from mesh.server import ServiceDefinition, run_service
from mesh.service_db import prepare_database, service_engine
from mesh.settings import Settings

# No key on the event id, on purpose: an event handled twice would show as two rows.
INDEX = Migration(
    1,
    "indexed",
    statements=(
        "CREATE TABLE indexed (event_id VARCHAR(64) NOT NULL, text VARCHAR(100) NOT NULL,"
        " instance VARCHAR(64) NOT NULL)",
    ),
)


async def build(settings: Settings, runtime: MeshRuntime) -> ServiceDefinition:
    engine = service_engine(settings)  # one SQLite file for both instances
    await prepare_database(engine, [INDEX, *inbox_migrations()])
    sessions = session_factory(engine, serial_writes=True)

    async def on_note(envelope: Envelope, session: AsyncSession) -> None:
        note = EVENTS.payload(envelope)
        await session.execute(
            text("INSERT INTO indexed VALUES (:e, :t, :i)"),
            {"e": envelope.id, "t": getattr(note, "value", ""), "i": settings.instance_id},
        )

    subscriber = EventSubscriber(
        settings.nats_url, sessions, "search",
        [SubscriptionSpec("note.created", "search-note-created", on_note)],
        name=settings.instance_id, access=bus_access(settings, EVENTS.domains, IDENTITIES),
    )  # fmt: skip

    async def stop() -> None:
        await subscriber.stop()
        await engine.dispose()

    return ServiceDefinition(
        name="search", servicers=[], service_names=[], on_start=[subscriber.start],
        on_stop=[stop],
    )  # fmt: skip


if __name__ == "__main__":
    run_service("search", build, grpc_port=0, admin_port=0)
