"""The ready-made probes against real dependencies: nats-server and a gRPC upstream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import nats
import pytest

from mesh.health import DependencyCheck, DependencyFailed, grpc_upstream_check, nats_check
from tests.support.bootstrap import PING_SERVICE, Starter, make_settings
from tests.support.nats import nats_server
from tests.support.pki import mtls_channel


async def test_nats_check_with_a_real_server(tmp_path: Path) -> None:
    async with nats_server(tmp_path / "nats") as server:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
        try:
            check = nats_check(nc)
            await check.probe()
            await server.stop()
            deadline = time.monotonic() + 5
            while True:  # poll: the client notices the lost connection asynchronously
                try:
                    await check.probe()
                except DependencyFailed:
                    break
                assert time.monotonic() < deadline, "nats_check never failed"
                await asyncio.sleep(0.02)  # poll
        finally:
            await nc.close()


async def test_grpc_upstream_check(start: Starter) -> None:
    async def database_down() -> None:
        raise DependencyFailed("down")

    sick = await start(checks=[DependencyCheck("database", database_down, True)])
    async with mtls_channel(sick.address, "ping") as ch:
        with pytest.raises(DependencyFailed, match="server is NOT_SERVING"):
            await grpc_upstream_check("sick", ch).probe()

    upstream = await start(settings=make_settings(instance_id="ping-2"))
    async with mtls_channel(upstream.address, "ping") as ch:
        await grpc_upstream_check("ping", ch).probe()
        await grpc_upstream_check("ping", ch, service=PING_SERVICE).probe()
        with pytest.raises(grpc.aio.AioRpcError):
            await grpc_upstream_check("x", ch, service="shop.nope.v1.Nope").probe()
        await upstream.stop(0)
        with pytest.raises(grpc.aio.AioRpcError):
            await grpc_upstream_check("ping", ch, timeout_s=0.5).probe()
