"""The embedded registry's files: names, format, leases, cheap rescans, heartbeats."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pytest

from mesh.discovery.embedded import (
    CRITICAL,
    PASSING,
    EmbeddedRegistry,
    ServiceScanner,
    check_name,
    instance_document,
    parse_document,
    write_atomically,
)
from mesh.discovery.registry import Instance

INSTANCE = Instance("orders-1", "orders", "127.0.0.1", 50052, "0.2.0", ("blue",), {"k": "v"})


def put(directory: Path, instance: Instance, status: str = PASSING, age_s: float = 0.0) -> Path:
    """A registration file as an owner writes it, last heartbeat `age_s` ago."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{instance.id}.json"
    write_atomically(path, json.dumps(instance_document(instance, status, "")).encode())
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def scanner(directory: Path, ttl_s: float = 3.0) -> ServiceScanner:
    return ServiceScanner(directory, ttl_s, 3 * ttl_s, time.time)


@pytest.mark.parametrize("bad", ["", ".hidden", "../up", "a/b", "x.json", "-x", "a b", "é", "up\n"])
def test_names_that_are_not_plain_file_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        check_name("service", bad)


def test_document_round_trip_and_malformed_documents() -> None:
    doc = json.loads(json.dumps(instance_document(INSTANCE, CRITICAL, "NOT_SERVING")))
    instance, status = parse_document(doc)
    assert (instance, dict(instance.meta), status) == (INSTANCE, {"k": "v"}, CRITICAL)
    broken: object
    for broken in (
        [],
        {**doc, "port": "50052"},
        {**doc, "tags": "blue"},
        {**doc, "meta": {"k": 1}},
        {k: v for k, v in doc.items() if k != "host"},
        {**doc, "status": None},
    ):
        with pytest.raises(ValueError):
            parse_document(broken)


def test_lease_expiry_health_and_garbage_collection(tmp_path: Path) -> None:
    d = tmp_path / "orders"
    fresh = put(d, INSTANCE)
    put(d, Instance("orders-2", "orders", "h", 2), CRITICAL)  # alive but unhealthy
    put(d, Instance("orders-3", "orders", "h", 3), age_s=5)  # missed its lease (ttl 3)
    dead = put(d, Instance("orders-4", "orders", "h", 4), age_s=10)  # past 3 * ttl
    assert [i.id for i in scanner(d).healthy()] == ["orders-1"]
    assert not dead.exists()  # collected
    assert (d / "orders-3.json").exists()  # expired, not yet collected
    assert fresh.exists()


def test_missing_directory_is_empty_and_a_broken_one_raises(tmp_path: Path) -> None:
    assert scanner(tmp_path / "nobody").healthy() == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        scanner(tmp_path / "file").healthy()
    with pytest.raises(NotADirectoryError):
        scanner(tmp_path / "file" / "orders").healthy()


def test_a_change_in_the_same_timestamp_tick_is_not_missed(tmp_path: Path) -> None:
    d = tmp_path / "orders"
    put(d, INSTANCE)
    s = scanner(d)
    assert len(s.healthy()) == 1
    tick = os.stat(d).st_mtime_ns
    put(d, INSTANCE, CRITICAL)
    os.utime(d, ns=(tick, tick))  # as if both writes landed in one coarse tick
    assert s.healthy() == []


def test_an_unchanged_directory_is_not_read_again(tmp_path: Path) -> None:
    """Polling costs a stat per file; contents are read only after a rename."""
    d = tmp_path / "orders"
    path = put(d, INSTANCE)
    old = time.time_ns() - 10_000_000_000
    os.utime(d, ns=(old, old))  # an old, trustworthy directory mtime
    s = scanner(d)
    assert len(s.healthy()) == 1
    path.write_text("{not json")  # in place: no rename, the directory does not change
    os.utime(d, ns=(old, old))
    assert len(s.healthy()) == 1  # cached: the file was not re-read


def test_malformed_files_are_ignored_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "orders"
    put(d, INSTANCE)
    (d / "junk.json").write_text("{")
    (d / ".orders-9.json.123.tmp").write_text("{")  # someone's temp file: not a registration
    s = scanner(d)
    with caplog.at_level(logging.WARNING, logger="mesh.discovery.embedded"):
        for _ in range(3):
            assert [i.id for i in s.healthy()] == ["orders-1"]
            os.utime(d)  # force a re-read each time
            time.sleep(0.001)  # poll: the next utime gets a later mtime
    assert len([r for r in caplog.records if "junk.json" in r.getMessage()]) == 1


async def test_register_writes_a_private_file_and_deregister_removes_it(tmp_path: Path) -> None:
    registry = EmbeddedRegistry(tmp_path / "reg", health_check=False)
    try:
        await registry.register(INSTANCE)
        path = tmp_path / "reg" / "orders" / "orders-1.json"
        stored, status = parse_document(json.loads(path.read_text()))
        assert stored == INSTANCE and status == PASSING
        assert (tmp_path / "reg").stat().st_mode & 0o777 == 0o700
        assert await registry.healthy("orders") == [INSTANCE]
        await registry.deregister("orders-1")
        assert not path.exists()
        await registry.deregister("orders-1")  # unknown ids are ignored
        with pytest.raises(ValueError):
            await registry.register(Instance("../x", "orders", "h", 1))
    finally:
        await registry.close()


async def test_heartbeat_rewrites_a_file_removed_under_a_live_owner(tmp_path: Path) -> None:
    registry = EmbeddedRegistry(tmp_path, ttl_s=1.0, heartbeat_s=0.05, health_check=False)
    try:
        await registry.register(INSTANCE)
        path = tmp_path / "orders" / "orders-1.json"
        path.unlink()  # a reader collected it while the owner was slow
        deadline = time.monotonic() + 2
        while not path.exists():
            assert time.monotonic() < deadline, "the owner never wrote its file again"
            await asyncio.sleep(0.02)  # poll
    finally:
        await registry.close()


def test_heartbeat_must_be_shorter_than_the_lease(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        EmbeddedRegistry(tmp_path, ttl_s=1.0, heartbeat_s=1.0)
