"""gRPC `shop.payments.v1.PaymentService`: validate, call the charging logic, map to protobuf."""

from __future__ import annotations

from typing import Any

from shop.payments.v1 import payments_pb2, payments_pb2_grpc

from mesh.service_db import db_guard
from services.common.timestamps import to_timestamp
from services.payments import validation
from services.payments.charges import Payments
from services.payments.store import CAPTURED, DECLINED, REFUNDED, PaymentRow

Context = Any  # grpc.aio.ServicerContext; unused: errors travel as exceptions

_STATUS = {
    CAPTURED: payments_pb2.PAYMENT_STATUS_CAPTURED,
    DECLINED: payments_pb2.PAYMENT_STATUS_DECLINED,
    REFUNDED: payments_pb2.PAYMENT_STATUS_REFUNDED,
}


def payment_to_proto(p: PaymentRow) -> payments_pb2.Payment:
    msg = payments_pb2.Payment(
        payment_id=p.payment_id,
        saga_id=p.saga_id,
        status=_STATUS.get(p.status, payments_pb2.PAYMENT_STATUS_UNSPECIFIED),
        card_last4=p.card_last4,
        decline_reason=p.decline_reason,
        create_time=to_timestamp(p.created_at),
    )
    if p.amount is not None:
        msg.amount.CopyFrom(p.amount.to_proto())
    return msg


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, payments: Payments) -> None:
        self.payments = payments

    @db_guard
    async def Charge(
        self, request: payments_pb2.ChargeRequest, context: Context
    ) -> payments_pb2.Payment:
        return payment_to_proto(await self.payments.charge(validation.charge(request)))

    @db_guard
    async def Refund(
        self, request: payments_pb2.RefundRequest, context: Context
    ) -> payments_pb2.Payment:
        saga_id, reason = validation.refund(request)
        return payment_to_proto(await self.payments.refund(saga_id, reason))

    @db_guard
    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Context
    ) -> payments_pb2.Payment:
        key, value = validation.get_payment(request)
        return payment_to_proto(await self.payments.get(key, value))
