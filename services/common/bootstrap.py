"""What every shop service's `build()` does with its database and events.

```python
db = await open_database(settings, store.migrations())          # engine, migrated
servicer = ...(Store(db.sessions, db.outbox))
return service_definition("users", settings, db, [(add_..._to_server, servicer)], [...])
```

The definition gets a required `database` check (SELECT 1), an optional `events`
check, and the outbox relay started after the server listens and stopped (then
the engine disposed) after the drain. (Undecodable request bodies answer
INVALID_ARGUMENT for every service: the mesh server chain does it.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mesh.db import Migration, session_factory
from mesh.events import Outbox, RelayConfig
from mesh.events.service import EventPublisher
from mesh.health import database_check
from mesh.server import AddServicer, ServiceDefinition
from mesh.service_db import prepare_database, service_engine
from mesh.settings import Settings
from services.common.events import bus_access


@dataclass
class Database:
    """A service's migrated database, its session factory and its outbox."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    outbox: Outbox
    owns_engine: bool = True

    async def close(self) -> None:
        if self.owns_engine:
            await self.engine.dispose()


async def open_database(
    settings: Settings, migrations: Sequence[Migration], *, engine: AsyncEngine | None = None
) -> Database:
    """The engine for settings (or `engine`, which the caller keeps owning), migrated."""
    owns = engine is None
    eng = service_engine(settings) if engine is None else engine
    try:
        await prepare_database(eng, migrations)
    except BaseException:
        if owns:
            await eng.dispose()
        raise
    return Database(eng, session_factory(eng, serial_writes=True), Outbox(), owns_engine=owns)


def service_definition(
    name: str,
    settings: Settings,
    db: Database,
    servicers: Sequence[tuple[AddServicer, Any]],
    service_names: Sequence[str],
    *,
    relay_config: RelayConfig | None = None,
) -> ServiceDefinition:
    publisher = EventPublisher(
        settings.nats_url,
        db.sessions,
        db.outbox,
        name=settings.instance_id or name,
        relay_config=relay_config,
        # Stable per instance: restarted with the same MESH_INSTANCE_ID, an instance
        # takes its publishing lease back at once instead of after it expires.
        holder=settings.instance_id or None,
        access=bus_access(settings),
    )
    return ServiceDefinition(
        name=name,
        servicers=servicers,
        service_names=service_names,
        checks=[database_check(db.engine), publisher.check()],
        on_start=[publisher.start],
        on_stop=[publisher.stop, db.close],
    )
