"""`mesh.service_db` in a running service: a database that does not answer (SQLite locked
by another writer past the busy timeout) answers the caller UNAVAILABLE with the reason
DATABASE_UNAVAILABLE, retryable, and the service keeps serving; a bug in a statement stays
INTERNAL. A real service over mTLS, a real SQLite file locked by a real second connection."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from shop.testing.v1 import ping_pb2, ping_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import Migration
from mesh.service_db import db_guard, prepare_database, service_engine
from tests.support.bootstrap import Starter, make_settings, ping_definition
from tests.support.ping import PingServicer
from tests.support.pki import mtls_channel

NOTES = Migration(1, "notes", statements=("CREATE TABLE notes (text VARCHAR(50))",))


class Writing(PingServicer):
    """Ping writes its value to the service's database: a store method under db_guard."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine

    @db_guard
    async def _write(self, value: str) -> None:
        async with self.engine.begin() as conn:
            await conn.exec_driver_sql("PRAGMA busy_timeout = 300")  # fail fast when locked
            table = "no_such_table" if value == "bug" else "notes"
            await conn.execute(text(f"INSERT INTO {table} (text) VALUES (:t)"), {"t": value})

    async def Ping(self, request: Any, context: Any) -> ping_pb2.PingResponse:
        await self._write(request.value)
        return await super().Ping(request, context)


def _reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


async def test_a_locked_database_answers_unavailable_and_the_service_stays_up(
    start: Starter, tmp_path: Path
) -> None:
    settings = dataclasses.replace(make_settings(), data_dir=str(tmp_path / "data"))
    engine = service_engine(settings)
    await prepare_database(engine, [NOTES])
    svc = await start(ping_definition(Writing(engine)), settings)
    other = sqlite3.connect(tmp_path / "data" / "ping.db", isolation_level=None)
    try:
        async with mtls_channel(svc.address, "ping") as ch:
            stub = ping_pb2_grpc.PingServiceStub(ch)
            await stub.Ping(ping_pb2.PingRequest(value="before"), timeout=5)
            other.execute("BEGIN IMMEDIATE")  # another writer holds the database
            with pytest.raises(grpc.aio.AioRpcError) as locked:
                await stub.Ping(ping_pb2.PingRequest(value="locked"), timeout=10)
            assert locked.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _reason(locked.value) == "DATABASE_UNAVAILABLE"
            assert "retry later" in (locked.value.details() or "")
            other.execute("ROLLBACK")
            await stub.Ping(ping_pb2.PingRequest(value="after"), timeout=5)  # still serving
            # A statement that is wrong is a bug, not an outage: INTERNAL, not retried.
            with pytest.raises(grpc.aio.AioRpcError) as bug:
                await stub.Ping(ping_pb2.PingRequest(value="bug"), timeout=5)
            assert bug.value.code() == grpc.StatusCode.INTERNAL
            assert "no_such_table" not in (bug.value.details() or "")  # kept in the logs
        rows = other.execute("SELECT text FROM notes ORDER BY rowid").fetchall()
        assert rows == [("before",), ("after",)]
    finally:
        other.close()
        await engine.dispose()
