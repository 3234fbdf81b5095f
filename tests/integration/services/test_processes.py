"""`python -m services.<name>`: starts from the environment, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.support.pki import mtls_channel
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]


async def _probe(service: str, channel: grpc.aio.Channel) -> grpc.StatusCode:
    """One real call; its status shows the servicer and its database answer."""
    missing = "123e4567-e89b-12d3-a456-426614174000"
    try:
        if service == "users":
            await users_pb2_grpc.UserServiceStub(channel).GetUser(
                users_pb2.GetUserRequest(user_id=missing), timeout=5
            )
        elif service == "inventory":
            await inventory_pb2_grpc.InventoryServiceStub(channel).GetProduct(
                inventory_pb2.GetProductRequest(product_id=missing), timeout=5
            )
        else:
            await payments_pb2_grpc.PaymentServiceStub(channel).GetPayment(
                payments_pb2.GetPaymentRequest(saga_id=missing), timeout=5
            )
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return,attr-defined]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("service", ["users", "inventory", "payments"])
async def test_service_process_serves_and_stops_on_sigterm(service: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}",
        "MESH_REGISTRY": "none",
        "MESH_DATA_DIR": str(tmp_path / "data"),
        "MESH_GRPC_PORT": str(port),
        "MESH_ADMIN_PORT": str(free_port()),
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nobody there: events wait in the outbox
        "USERS_PASSWORD_PROFILE": "cheapest",
    }
    env.pop(f"{service.upper()}_DATABASE_URL", None)
    log_path = tmp_path / "service.log"  # a file: what it wrote is kept even if it hangs
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{service}", cwd=tmp_path, env=env,
            stdout=log_file, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    channel = mtls_channel(f"127.0.0.1:{port}", service)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:  # poll until the process serves
            assert proc.returncode is None, "the service exited during start"
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "the service never became SERVING"
            await asyncio.sleep(0.1)  # poll
        assert await _probe(service, channel) == grpc.StatusCode.NOT_FOUND
        assert (tmp_path / "data" / f"{service}.db").exists()  # the default SQLite file
        proc.send_signal(signal.SIGTERM)
        # The stop takes ~0.05 s here; once (a CI run under load, 7 Dec 2026) it took over
        # 20 s and said nothing: its grace is 10 s, and a timeout now shows the log.
        try:
            async with asyncio.timeout(40):
                await proc.wait()
        except TimeoutError:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise AssertionError(f"no stop within 40 s of SIGTERM:\n{tail}") from None
        output = log_path.read_bytes()
        assert proc.returncode == 0, output.decode(errors="replace")
        assert b"Traceback" not in output, output.decode(errors="replace")
    finally:
        await channel.close(None)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
