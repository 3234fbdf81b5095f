"""Running the shop's services for tests: real grpc.aio servers on loopback.

`serve(build, settings, engine=..., config=...)` runs a service's `build()` and
`mesh.server.start_service` with the mesh's server interceptor chain (without
registry, metrics and tracing): the same servicers, validation, error mapping
and database as in production. `rpc_error_details(err)` reads the google.rpc.Status details
(ErrorInfo reason/metadata, BadRequest field violations) a client would see.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from base.errors import details_of
from mesh.server import RunningService, ServiceDefinition, start_service
from mesh.settings import Settings
from tests.support.pki import mtls_channel, session_pki


@dataclass
class StandInRuntime:
    """What start_service needs of a MeshRuntime, with registry/metrics/tracing off."""

    registry: Any = None
    prometheus: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: Any = None
    tracer_provider: Any = None


def service_settings(service: str, tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        service=service,
        instance_id=f"{service}-{uuid.uuid4().hex[:6]}",
        registry="none",
        nats_url="",  # no relay: tests read the outbox table
        data_dir=str(tmp_path / "data"),
        drain_grace_s=1.0,
        security=session_pki(),
    )
    return replace(base, **overrides)


Build = Callable[..., Awaitable[ServiceDefinition]]


@dataclass
class Served:
    running: RunningService
    channel: grpc.aio.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def close(self) -> None:
        await self.channel.close(None)
        await self.running.stop(0.5)


async def serve(build: Build, settings: Settings, **build_kwargs: Any) -> Served:
    runtime = StandInRuntime()
    definition = await build(settings, runtime, **build_kwargs)
    # The production chain (logging -> errors -> deadline; no tracing or metrics here).
    running = await start_service(definition, settings, runtime)
    channel = mtls_channel(f"127.0.0.1:{running.port}", settings.service)
    return Served(running, channel)


@dataclass
class ErrorDetails:
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: dict[str, str] = field(default_factory=dict)


def rpc_error_details(err: grpc.RpcError) -> ErrorDetails:
    """ErrorInfo and BadRequest details of a failed call (empty when absent)."""
    bad_request, info = details_of(err)  # type: ignore[arg-type]
    return ErrorDetails(
        reason=info.reason if info else "",
        metadata=dict(info.metadata) if info else {},
        violations={v.field: v.description for v in bad_request.field_violations}
        if bad_request
        else {},
    )


async def outbox_events(engine: Any) -> list[Any]:
    """Every event committed to the service's outbox, oldest first (decoded envelopes)."""
    from sqlalchemy import text

    from mesh.events import decode

    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT payload FROM mesh_outbox ORDER BY seq"))).all()
    return [decode(bytes(r[0])) for r in rows]


async def dump_text(engine: Any) -> str:
    """Every value of every table of the database as text (for "never stored" checks)."""
    from sqlalchemy import inspect, text

    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        parts: list[str] = []
        for table in tables:
            for row in (await conn.execute(text(f'SELECT * FROM "{table}"'))).all():
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        parts.append(bytes(value).decode("latin-1"))
                    else:
                        parts.append(str(value))
    return "\n".join(parts)
