"""What the bus logs about its NATS connection: a lost server is a WARNING, the process's
own close (a service shutting down, Ctrl-C on `make run`) is not."""

from __future__ import annotations

import logging

import pytest

from mesh.events.bus import connect_nats
from tests.support.nats import NatsServer
from tests.support.poll import eventually

BUS_LOG = "mesh.events.bus"


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == BUS_LOG and r.levelno == level]


async def test_closing_the_connection_is_no_warning(
    nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BUS_LOG)
    nc = await connect_nats(nats_srv.admin_url, name="closing")
    await nc.close()
    assert _records(caplog, logging.WARNING) == []
    assert _records(caplog, logging.INFO) == ["nats closing: connection closed"]


async def test_losing_the_server_is_a_warning(
    nats_srv: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BUS_LOG)
    nc = await connect_nats(nats_srv.admin_url, name="losing")
    try:
        await nats_srv.stop()
        await eventually(
            lambda: _records(caplog, logging.WARNING) == ["nats losing: disconnected"],
            10,
            "the disconnect warning",
        )
    finally:
        await nc.close()
