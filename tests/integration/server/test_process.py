"""run_service as a real process (tests.support.ping_service): signals, drain, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from tests.support.pki import mtls_channel

REPO = Path(__file__).resolve().parents[3]
GRACE_S = 15.0  # long: the drain must end with the last call, far sooner
Process = asyncio.subprocess.Process


async def spawn(tmp_path: Path, **env: str) -> Process:
    full_env = {
        **os.environ,
        "MESH_REGISTRY": "embedded",
        "MESH_REGISTRY_DIR": str(tmp_path / "registry"),
        "MESH_DRAIN_GRACE_S": str(GRACE_S),
        "MESH_INSTANCE_ID": "ping-proc",
        "MESH_LOG_LEVEL": "INFO",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        **env,
    }
    full_env.pop("CONSUL_HTTP_ADDR", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.ping_service",
        cwd=REPO,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@asynccontextmanager
async def ping_process(tmp_path: Path, **env: str) -> AsyncIterator[tuple[Process, Instance]]:
    """The process, once it is registered and healthy; killed if the test leaves it running."""
    registry = EmbeddedRegistry(tmp_path / "registry", health_check=False)
    proc = await spawn(tmp_path, **env)
    try:
        deadline = time.monotonic() + 20
        while not (found := await registry.healthy("ping")):
            if proc.returncode is not None or time.monotonic() > deadline:
                _out, err = await proc.communicate()
                raise AssertionError(f"ping service never registered: {err.decode()[-3000:]}")
            await asyncio.sleep(0.05)  # poll the registry
        [instance] = found
        yield proc, instance
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await registry.close()


async def refused(address: str) -> bool:
    """A new connection's call fails UNAVAILABLE (the listener is closed)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with mtls_channel(address, "ping", options=options) as ch:
        try:
            await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(), timeout=1)
        except grpc.aio.AioRpcError as err:
            return err.code() == grpc.StatusCode.UNAVAILABLE
    return False


async def test_sigterm_drains_in_flight_deregisters_and_exits_0(tmp_path: Path) -> None:
    registry = EmbeddedRegistry(tmp_path / "registry", health_check=False)
    async with ping_process(tmp_path) as (proc, instance):
        assert instance.id == "ping-proc"
        assert instance.meta["proto_packages"] == "shop.testing.v1"
        async with mtls_channel(instance.address, "ping") as ch:
            # The read/write style of a bidi call (grpc-stubs only knows the iterator style).
            stream: Any = ping_pb2_grpc.PingServiceStub(ch).PingBidi()  # type: ignore[call-arg]
            await stream.write(ping_pb2.PingRequest(value="before"))
            assert (await stream.read()).value == "before"  # the call is in flight now

            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            deadline = signalled + 5
            while await registry.healthy("ping"):
                assert time.monotonic() < deadline, "still registered after SIGTERM"
                await asyncio.sleep(0.05)  # poll the registry
            while not await refused(instance.address):
                assert time.monotonic() < deadline, "new calls still accepted while draining"
                await asyncio.sleep(0.05)  # poll

            # The in-flight call carries on and completes OK.
            await stream.write(ping_pb2.PingRequest(value="during", sleep_ms=300))
            assert (await stream.read()).value == "during"
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK

        rc = await asyncio.wait_for(proc.wait(), GRACE_S + 5)
        elapsed = time.monotonic() - signalled
        _out, err = await proc.communicate()
        assert rc == 0, err.decode()[-3000:]
        assert elapsed < GRACE_S, "the drain should end with the last call, not at the grace"
        assert "Traceback" not in err.decode()
    await registry.close()


async def test_sigint_stops_gracefully(tmp_path: Path) -> None:
    registry = EmbeddedRegistry(tmp_path / "registry", health_check=False)
    async with ping_process(tmp_path) as (proc, _instance):
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), GRACE_S + 5)
        _out, err = await proc.communicate()
        assert rc == 0, err.decode()[-3000:]
        assert "KeyboardInterrupt" not in err.decode()
        assert await registry.healthy("ping") == []
    await registry.close()


async def test_once_serving_gc_freezes_start_up_unless_turned_off(tmp_path: Path) -> None:
    for threshold, tuned in (("", True), ("0", False)):
        env = {"MESH_GC_GEN0_THRESHOLD": threshold} if threshold else {}
        async with ping_process(tmp_path, **env) as (proc, _instance):
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), GRACE_S + 5) == 0
            _out, err = await proc.communicate()
        line = next((x for x in err.decode().splitlines() if "start-up objects frozen" in x), "")
        assert bool(line) is tuned, err.decode()[-3000:]
        if tuned:
            assert "young collections every 10000 allocations" in line


async def test_signal_during_start_up_exits_0_unregistered(tmp_path: Path) -> None:
    proc = await spawn(tmp_path, PING_BLOCK_BUILD="1")
    try:
        assert proc.stderr is not None
        while b"build blocked" not in (line := await asyncio.wait_for(proc.stderr.readline(), 20)):
            assert line, "the process ended before its build"
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
        _out, err = await proc.communicate()
        assert rc == 0, err.decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    registry = EmbeddedRegistry(tmp_path / "registry", health_check=False)
    assert await registry.healthy("ping") == []
    await registry.close()


async def test_malformed_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    proc = await spawn(tmp_path, MESH_GRPC_PORT="abc")
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    text = err.decode()
    assert "MESH_GRPC_PORT" in text
    assert "Traceback" not in text


async def test_port_in_use_exits_1_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await spawn(tmp_path, MESH_GRPC_PORT=str(port))
        _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1, err.decode()[-3000:]
    text = err.decode()
    assert f"cannot bind gRPC port 127.0.0.1:{port}" in text
    assert "Traceback" not in text
