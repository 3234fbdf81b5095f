"""The saga tests' database, runners and metric reading (fixtures `db`, `runners`:
tests/integration/saga/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from mesh.saga import SagaDefinition, SagaRunner, SagaStore, StepRetry

# Tiny backoffs keep retry and parking tests fast.
FAST_RETRY = StepRetry(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.005)


@dataclass
class Db:
    kind: str
    url: str
    schema: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.sessions() as s:
            return await s.scalar(text(sql), params)

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        async with self.sessions() as s:
            return [tuple(r) for r in (await s.execute(text(sql), params)).all()]


@dataclass
class Runners:
    """Builds runners on one database and closes them after the test."""

    db: Db
    made: list[SagaRunner] = field(default_factory=list)

    def __call__(self, *definitions: SagaDefinition, **kwargs: Any) -> SagaRunner:
        kwargs.setdefault("compensation_retry", FAST_RETRY)
        runner = SagaRunner(
            SagaStore(self.db.sessions),
            {d.name: d for d in definitions},
            kwargs.pop("registry", None) or CollectorRegistry(),
            **kwargs,
        )
        self.made.append(runner)
        return runner


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A metric sample (0 when never set)."""
    return float(registry.get_sample_value(name, labels) or 0.0)
