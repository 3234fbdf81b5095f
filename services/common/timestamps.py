"""UTC datetimes between the database and `google.protobuf.Timestamp`.

Services store UTC. PostgreSQL returns aware datetimes; SQLite returns naive ones
(it keeps no zone), which are UTC because only UTC is ever written.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(as_utc(value))
    return ts
