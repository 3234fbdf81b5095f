"""The shop's caller policy (from the contracts) on a mesh server, over real mTLS.

payments is served by a stand-in servicer under the mesh bootstrap: the policy
comes from `shop.payments.v1`'s options and is enforced before any handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc

from mesh.security.policy import load_rows, render_markdown
from mesh.server import RunningService, ServiceDefinition, start_service
from mesh.settings import Settings
from tests.support import pki
from tests.support.server_runtime import StubRuntime

PAYMENTS = "shop.payments.v1.PaymentService"
README = Path(__file__).resolve().parents[3] / "README.md"


class Payments(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def Charge(self, request: Any, context: Any) -> payments_pb2.Payment:
        self.calls += 1
        return payments_pb2.Payment(payment_id="p1")

    async def GetPayment(self, request: Any, context: Any) -> payments_pb2.Payment:
        self.calls += 1
        return payments_pb2.Payment(payment_id=request.payment_id)


@pytest.fixture
async def payments() -> AsyncIterator[tuple[RunningService, Payments]]:
    servicer = Payments()
    definition = ServiceDefinition(
        name="payments",
        servicers=[(payments_pb2_grpc.add_PaymentServiceServicer_to_server, servicer)],
        service_names=[PAYMENTS],
    )
    settings = Settings(service="payments", registry="none", security=pki.session_pki())
    running = await start_service(definition, settings, StubRuntime())
    yield running, servicer
    await running.stop(0)


async def _call(address: str, caller: str, method: str, request: Any) -> grpc.StatusCode:
    """The status of one PaymentService call made as `caller`."""
    async with pki.mtls_channel(address, "payments", caller=caller) as ch:
        try:
            await getattr(payments_pb2_grpc.PaymentServiceStub(ch), method)(request, timeout=3)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def _charge(address: str, caller: str) -> grpc.StatusCode:
    return await _call(address, caller, "Charge", payments_pb2.ChargeRequest())


async def _metrics(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


async def test_only_orders_may_charge(payments: tuple[RunningService, Payments]) -> None:
    svc, servicer = payments
    assert await _charge(svc.address, "orders") == grpc.StatusCode.OK
    assert servicer.calls == 1
    assert await _charge(svc.address, "inventory") == grpc.StatusCode.PERMISSION_DENIED
    # belt and braces beside "no route at the edge": the edge's identity is refused too
    assert await _charge(svc.address, "edge") == grpc.StatusCode.PERMISSION_DENIED
    # a developer's `mesh.connect` process may call what the edge may, never payments
    assert await _charge(svc.address, "mesh-client") == grpc.StatusCode.PERMISSION_DENIED
    assert servicer.calls == 1  # no handler ran for the refused calls
    text = await _metrics(svc.admin_port)
    assert (
        'mesh_server_denied_total{caller="inventory",grpc_code="PERMISSION_DENIED",'
        'grpc_method="Charge",grpc_service="shop.payments.v1.PaymentService"} 1.0'
    ) in text
    assert 'caller="edge"' in text


async def test_health_is_open_to_every_mesh_identity_and_reflection_is_off(
    payments: tuple[RunningService, Payments],
) -> None:
    svc, _ = payments
    async with pki.mtls_channel(svc.address, "payments", caller="inventory") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # payments is internal: no server reflection by default.
        reflect = ch.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )
        call = reflect(iter([b""]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_readme_policy_matrix_is_up_to_date() -> None:
    from mesh.security.policy import MATRIX_END, MATRIX_START

    text = README.read_text()
    assert MATRIX_START in text, "README has no policy matrix: `meshctl policy --markdown`"
    inside = text.split(MATRIX_START, 1)[1].split(MATRIX_END, 1)[0].strip()
    assert inside == render_markdown(load_rows()), (
        "README policy matrix is out of date: paste `meshctl policy --markdown`"
    )


async def test_meshctl_policy_prints_the_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    from mesh.cli import main

    assert await asyncio.to_thread(main, ["policy"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"{PAYMENTS}/Charge"))
    assert line.split()[1:] == ["orders", "[internal]"]


async def test_a_method_the_servicer_lacks_is_refused_to_a_caller_the_policy_refuses(
    payments: tuple[RunningService, Payments],
) -> None:
    """Refund is left to grpc's generated base class here: an allowed caller learns it is
    UNIMPLEMENTED, any other is refused first, as for every method (until 6 Dec 2026 such
    a method bypassed the chain, so anyone with a mesh certificate got UNIMPLEMENTED)."""
    svc, _ = payments

    async def refund(caller: str) -> grpc.StatusCode:
        return await _call(svc.address, caller, "Refund", payments_pb2.RefundRequest())

    assert await refund("orders") == grpc.StatusCode.UNIMPLEMENTED
    assert await refund("inventory") == grpc.StatusCode.PERMISSION_DENIED
    assert await refund("mesh-client") == grpc.StatusCode.PERMISSION_DENIED
