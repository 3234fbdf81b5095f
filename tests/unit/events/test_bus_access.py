"""`mesh.events.service.bus_access` for a project of its own: the streams of its event
types' domains, only its own declared (its NATS permissions allow no other), its
identity's credentials checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.events.nats_auth import Consumes, EventIdentity
from mesh.events.nats_connect import NatsConfigError
from mesh.events.service import bus_access
from mesh.settings import Settings

DOMAINS = ("note", "search")
IDENTITIES = (
    EventIdentity("notes", publishes=("note",)),
    EventIdentity("search", consumes=(Consumes("note.created", "search-note-created"),)),
)


def test_a_publisher_declares_its_domain_s_stream_only() -> None:
    access = bus_access(Settings.from_env("notes", {}), DOMAINS, IDENTITIES)
    assert {s.name for s in access.streams} == {"NOTE", "SEARCH", "DLQ"}
    assert [s.name for s in access.declares] == ["NOTE"]
    assert access.auth.inbox_prefix == "_INBOX.notes"


def test_a_consumer_declares_the_dead_letters_only() -> None:
    access = bus_access(Settings.from_env("search", {}), DOMAINS, IDENTITIES)
    assert [s.name for s in access.declares] == ["DLQ"]


def test_a_service_the_table_does_not_name_declares_every_stream() -> None:
    """With a NATS of one's own (no permissions), as a service with no identity."""
    access = bus_access(Settings.from_env("other", {}), DOMAINS, IDENTITIES)
    assert [s.name for s in access.declares] == [s.name for s in access.streams]


def test_the_settings_limits_reach_every_stream() -> None:
    env = {"MESH_STREAM_MAX_BYTES": "4096", "MESH_STREAM_MAX_MSGS": "10"}
    access = bus_access(Settings.from_env("notes", env), DOMAINS, IDENTITIES)
    assert {(s.max_bytes, s.max_msgs) for s in access.streams} == {(4096, 10)}


def test_a_missing_seed_file_stops_the_start(tmp_path: Path) -> None:
    env = {"NATS_NKEY_SEED_FILE": str(tmp_path / "absent.nk")}
    with pytest.raises(NatsConfigError, match="NATS_NKEY_SEED_FILE"):
        bus_access(Settings.from_env("notes", env), DOMAINS, IDENTITIES)
