"""Random and malformed requests at every RPC of users, inventory and payments.

Hypothesis builds requests from each method's descriptor: strings from a pool of
troublemakers (empty, NUL, very long, emoji, injection-looking, almost-UUIDs) mixed
with real ids of seeded rows, test card numbers and currency codes; integers at
int64/int32 edges; nested messages present or absent; repeated fields empty, short
or over the limit. Raw undecodable bodies too. Every answer must be a status the
contract defines (never UNKNOWN or INTERNAL, and UNAVAILABLE only for the payment
processor's own reasons), and the servers must keep serving.

The servers run in an event loop on a background thread, once on SQLite and once
on PostgreSQL (where a NUL in a string or an int64 overflow would be a database
error), each for all the tests of the module; the tests drive them with
synchronous stubs (Hypothesis runs sync tests).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from base.errors import details_of
from mesh.db import create_engine
from services.inventory.app import build as build_inventory
from services.inventory.config import InventoryConfig
from services.payments.app import build as build_payments
from services.payments.config import PaymentsConfig
from services.payments.processor import APPROVE, DECLINE, PROCESSOR_ERROR, SLOW
from services.users.app import build as build_users
from services.users.config import UsersConfig
from tests.support.pki import sync_mtls_channel
from tests.support.postgres import PG_URL, pg_available
from tests.support.services import Served, serve, service_settings

T = TypeVar("T")

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# UNAVAILABLE is defined for the processor's outage and a charge in flight only:
# a database outage here would be a bug (e.g. SQLite locked by our own writes).
UNAVAILABLE_REASONS = {"PROCESSOR_UNAVAILABLE", "CHARGE_IN_PROGRESS"}
# RESOURCE_EXHAUSTED only from the failed-login throttle (wrong passwords for the seed).
EXHAUSTED_REASONS = {"LOGIN_THROTTLED"}
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
EXAMPLES = 30


@dataclass
class Seed:
    """Rows that exist, so random requests sometimes hit them, and valid requests to mutate."""

    strings: list[str]
    templates: dict[str, Message]


@dataclass
class Shop:
    addresses: dict[str, str]
    seed: Seed


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _seed(served: dict[str, Served]) -> Seed:
    users = users_pb2_grpc.UserServiceStub(served["users"].channel)
    catalogue = inventory_pb2_grpc.InventoryServiceStub(served["inventory"].channel)
    reservations = inventory_pb2_grpc.ReservationServiceStub(served["inventory"].channel)
    payments = payments_pb2_grpc.PaymentServiceStub(served["payments"].channel)
    user = await users.CreateUser(
        users_pb2.CreateUserRequest(email="seed@example.com", password="seed password",
                                    profile=users_pb2.Profile(display_name="Seed"))
    )  # fmt: skip
    auth = await users.Authenticate(
        users_pb2.AuthenticateRequest(email="seed@example.com", password="seed password")
    )
    product = await catalogue.CreateProduct(
        inventory_pb2.CreateProductRequest(
            sku="SEED", name="Seed", initial_stock=1000,
            price=money_pb2.Money(currency_code="USD", amount_minor=100))
    )  # fmt: skip
    held, charged = str(uuid.uuid4()), str(uuid.uuid4())
    await reservations.ReserveItems(
        inventory_pb2.ReserveItemsRequest(
            saga_id=held, items=[inventory_pb2.LineItem(product_id=product.product_id, quantity=1)]
        )
    )
    payment = await payments.Charge(
        payments_pb2.ChargeRequest(
            saga_id=charged, amount=money_pb2.Money(currency_code="EUR", amount_minor=100),
            card=payments_pb2.PaymentCard(number=APPROVE, exp_month=12,
                                          exp_year=datetime.now(UTC).year + 1, cvc="123"))
    )  # fmt: skip
    strings = [user.user_id, auth.session_token, auth.refresh_token, "seed@example.com",
               "seed password", product.product_id, "SEED", held, charged,
               payment.payment_id]  # fmt: skip
    return Seed(strings, _templates(user, auth, product, held, charged, payment))


def _templates(
    user: users_pb2.User,
    auth: users_pb2.AuthenticateResponse,
    product: inventory_pb2.Product,
    held: str,
    charged: str,
    payment: payments_pb2.Payment,
) -> dict[str, Message]:
    """One valid request per RPC (method name -> request), the starting point of mutations."""
    pid, fresh = product.product_id, str(uuid.uuid4())
    line = [inventory_pb2.LineItem(product_id=pid, quantity=1)]
    usd = money_pb2.Money(currency_code="USD", amount_minor=100)
    card = payments_pb2.PaymentCard(number=APPROVE, exp_month=12,
                                    exp_year=datetime.now(UTC).year + 1, cvc="123")  # fmt: skip
    return {
        "CreateUser": users_pb2.CreateUserRequest(
            email="new@example.com", password="password123",
            profile=users_pb2.Profile(display_name="New")),
        "GetUser": users_pb2.GetUserRequest(user_id=user.user_id),
        "DeleteUser": users_pb2.DeleteUserRequest(user_id=fresh),
        "Authenticate": users_pb2.AuthenticateRequest(email=user.email, password="seed password"),
        "ValidateSession": users_pb2.ValidateSessionRequest(session_token=auth.session_token),
        "RefreshSession": users_pb2.RefreshSessionRequest(refresh_token=auth.refresh_token),
        "RevokeSession": users_pb2.RevokeSessionRequest(refresh_token=fresh),
        "CreateProduct": inventory_pb2.CreateProductRequest(
            sku="NEW-1", name="New", price=usd, initial_stock=5),
        "GetProduct": inventory_pb2.GetProductRequest(product_id=pid),
        "ListProducts": inventory_pb2.ListProductsRequest(page_size=10),
        "AddStock": inventory_pb2.AddStockRequest(product_id=pid, quantity=1),
        "CheckAvailability": inventory_pb2.CheckAvailabilityRequest(items=line),
        "ReserveItems": inventory_pb2.ReserveItemsRequest(saga_id=fresh, items=line),
        "ConfirmReservation": inventory_pb2.ConfirmReservationRequest(saga_id=held),
        "ReleaseReservation": inventory_pb2.ReleaseReservationRequest(saga_id=fresh, reason="r"),
        "ReturnReservation": inventory_pb2.ReturnReservationRequest(saga_id=held, reason="r"),
        "Charge": payments_pb2.ChargeRequest(saga_id=fresh, amount=usd, card=card),
        "Refund": payments_pb2.RefundRequest(saga_id=charged, reason="r"),
        "GetPayment": payments_pb2.GetPaymentRequest(payment_id=payment.payment_id),
    }  # fmt: skip


async def _engine(kind: str, name: str, tmp: Path) -> tuple[AsyncEngine, str]:
    if kind == "sqlite":
        return create_engine(f"sqlite+aiosqlite:///{tmp / name}.db"), ""
    schema = f"fuzz_{name}_{time.time_ns()}"
    admin = create_engine(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    await admin.dispose()
    return create_engine(PG_URL, connect_args={"server_settings": {"search_path": schema}}), schema


async def _drop(engine: AsyncEngine, schema: str) -> None:
    if schema:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    await engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    """The three services, each on its own database (SQLite files, then PostgreSQL schemas)."""
    kind: str = request.param
    tmp: Path = tmp_path_factory.mktemp(f"bad-input-{kind}")
    runner = _LoopThread()
    if kind == "postgresql" and not runner.run(pg_available()):
        runner.close()
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    served: dict[str, Served] = {}
    engines: list[tuple[AsyncEngine, str]] = []
    try:
        for name, build, config in (
            ("users", build_users, UsersConfig(password_profile="cheapest")),
            ("inventory", build_inventory, InventoryConfig()),
            ("payments", build_payments, PaymentsConfig(slow_card_delay_s=0.01)),
        ):
            engine, schema = runner.run(_engine(kind, name, tmp))
            engines.append((engine, schema))
            served[name] = runner.run(
                serve(build, service_settings(name, tmp), engine=engine, config=config)
            )
        seed = runner.run(_seed(served))
        yield Shop({n: s.address for n, s in served.items()}, seed)
    finally:
        for s in served.values():
            runner.run(s.close())
        for engine, schema in engines:
            runner.run(_drop(engine, schema))
        runner.close()


TROUBLE = [
    "", " ", "\x00", "a\x00b", "\n", "\t\r", "x" * 300, "y" * 5000, "🙂", "é" * 70,
    "' OR 1=1 --", "%s%n", "../../etc/passwd", "null", "-1", "0", "9" * 30,
    "123e4567-e89b-12d3-a456-42661417400", "123e4567-e89b-12d3-a456-4266141740000",
    "{123e4567-e89b-12d3-a456-426614174000}", "123e4567e89b12d3a456426614174000",
    "123E4567-E89B-12D3-A456-426614174000", "123e4567-e89b-12d3-a456-426614174000\n",
    "USD", "usd", "EUR", "JPY", "XXX", "US", "a@b.c", "a@b", "@example.com",
    APPROVE, DECLINE, PROCESSOR_ERROR, SLOW, "4242424242424241", "4242 4242 4242 4242",
    "123", "12345",
]  # fmt: skip


def _strings(seed: Seed) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(TROUBLE + seed.strings),
        st.text(max_size=40),
        st.uuids().map(str),
    )


def _ints(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    lo, hi = bounds
    edges = [v for v in (0, 1, -1, 2, 12, 100, 101, 2026, 10**9, 10**12, 10**15 + 1, lo, hi)
             if lo <= v <= hi]  # fmt: skip
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


FD = pb_descriptor.FieldDescriptor


def _field(fd: Any, seed: Seed, depth: int) -> st.SearchStrategy[Any]:
    base: st.SearchStrategy[Any]
    if fd.type == FD.TYPE_MESSAGE:
        if depth >= 3:
            return st.nothing()
        base = messages(message_factory.GetMessageClass(fd.message_type), seed, depth + 1)
    elif fd.type == FD.TYPE_STRING:
        base = _strings(seed)
    elif fd.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        base = _ints(INT64)
    elif fd.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        base = _ints(INT32)
    elif fd.type == FD.TYPE_BOOL:
        base = st.booleans()
    elif fd.type == FD.TYPE_ENUM:
        base = st.sampled_from([v.number for v in fd.enum_type.values])
    elif fd.type == FD.TYPE_BYTES:
        base = st.binary(max_size=40)
    else:
        raise NotImplementedError(f"no strategy for field type {fd.type} ({fd.full_name})")
    if fd.is_repeated:
        return st.one_of(st.lists(base, max_size=4), base.map(lambda x: [x] * 101))
    return base


def messages(cls: type[Message], seed: Seed, depth: int = 0) -> st.SearchStrategy[Message]:
    """Requests of type `cls` with any subset of fields set to awkward values."""
    fields = {fd.name: _field(fd, seed, depth) for fd in cls.DESCRIPTOR.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: cls(**kw))


def _set(msg: Message, fd: Any, value: Any) -> None:
    msg.ClearField(fd.name)
    if fd.is_repeated:
        getattr(msg, fd.name).extend(value)
    elif fd.type == FD.TYPE_MESSAGE:
        getattr(msg, fd.name).CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


def mutated(valid: Message, seed: Seed, depth: int = 0) -> st.SearchStrategy[Message]:
    """`valid` with one or two fields (possibly nested, or one list element) made awkward.

    Fully random requests mostly stop at the first validation error; a valid
    request with one bad field reaches the store and the database with it.
    """
    fields: list[Any] = list(valid.DESCRIPTOR.fields)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = type(valid)()
        msg.CopyFrom(valid)
        chosen = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=2,
                               unique_by=lambda f: f.name))  # fmt: skip
        for fd in chosen:
            nested = fd.type == FD.TYPE_MESSAGE and depth < 2 and draw(st.booleans())
            if nested and fd.is_repeated and len(getattr(msg, fd.name)):
                items = getattr(msg, fd.name)
                i = draw(st.integers(0, len(items) - 1))
                items[i].CopyFrom(draw(mutated(items[i], seed, depth + 1)))
            elif nested and not fd.is_repeated and msg.HasField(fd.name):
                sub = getattr(msg, fd.name)
                sub.CopyFrom(draw(mutated(sub, seed, depth + 1)))
            else:
                _set(msg, fd, draw(_field(fd, seed, depth + 1)))
        return msg

    return build()


@dataclass(frozen=True)
class Rpc:
    service: str  # which server
    path: str
    request: type[Message]
    response: type[Message]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _rpcs() -> list[Rpc]:
    out = []
    for server, module, grpc_module in (
        ("users", users_pb2, users_pb2_grpc),
        ("inventory", inventory_pb2, inventory_pb2_grpc),
        ("payments", payments_pb2, payments_pb2_grpc),
    ):
        del grpc_module
        for svc in module.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.append(
                    Rpc(
                        server,
                        f"/{svc.full_name}/{m.name}",
                        message_factory.GetMessageClass(m.input_type),
                        message_factory.GetMessageClass(m.output_type),
                    )
                )
    return out


RPCS = _rpcs()


def test_every_rpc_is_covered(shop: Shop) -> None:
    assert len(RPCS) == 19  # users 7, inventory 5 + 4, payments 3
    assert {r.name for r in RPCS} == set(shop.seed.templates)


@pytest.fixture(scope="module")
def channels(shop: Shop) -> Iterator[dict[str, grpc.Channel]]:
    chans = {name: sync_mtls_channel(addr, name) for name, addr in shop.addresses.items()}
    yield chans
    for c in chans.values():
        c.close()


def _check(code: grpc.StatusCode, err: grpc.RpcError | None, rpc: Rpc, what: object) -> None:
    assert code in ALLOWED, f"{rpc} answered {code} to {what!r}: {err}"
    if code == grpc.StatusCode.UNAVAILABLE and err is not None:
        _, info = details_of(err)  # type: ignore[arg-type]
        reason = info.reason if info else ""
        assert reason in UNAVAILABLE_REASONS, f"{rpc} UNAVAILABLE ({reason}) to {what!r}: {err}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and err is not None:
        _, info = details_of(err)  # type: ignore[arg-type]
        reason = info.reason if info else ""
        assert reason in EXHAUSTED_REASONS, f"{rpc} RESOURCE_EXHAUSTED ({reason}) to {what!r}"


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_random_requests_get_defined_statuses(
    rpc: Rpc, shop: Shop, channels: dict[str, grpc.Channel]
) -> None:
    call = channels[rpc.service].unary_unary(
        rpc.path,
        request_serializer=rpc.request.SerializeToString,
        response_deserializer=rpc.response.FromString,
    )

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(st.one_of(messages(rpc.request, shop.seed),
                     mutated(shop.seed.templates[rpc.name], shop.seed)))  # fmt: skip
    def check(request: Message) -> None:
        try:
            call(request, timeout=10)
            code, err = grpc.StatusCode.OK, None
        except grpc.RpcError as exc:
            code, err = exc.code(), exc  # type: ignore[attr-defined]
        _check(code, err, rpc, request)

    check()


def _leaf_fields(msg: Message, prefix: str = "") -> Iterator[tuple[str, Message, Any]]:
    """(path, containing message, field) of every scalar field of `msg`, nested ones included."""
    for fd in msg.DESCRIPTOR.fields:
        if fd.type == FD.TYPE_MESSAGE:
            children = getattr(msg, fd.name) if fd.is_repeated else [getattr(msg, fd.name)]
            for i, child in enumerate(children):
                yield from _leaf_fields(child, f"{prefix}{fd.name}[{i}].")
        elif not fd.is_repeated:
            yield f"{prefix}{fd.name}", msg, fd


STRING_SWEEP = ["", "\x00", "a\x00b", "line\nbreak", "x" * 5000, "🙂" * 300, "' OR 1=1 --"]
INT_SWEEP = [0, -1, 1, 101, 2**31 - 1, -(2**31)]
INT64_SWEEP = [*INT_SWEEP, 10**15 + 1, 2**63 - 1, -(2**63)]


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_each_field_with_awkward_values(
    rpc: Rpc, shop: Shop, channels: dict[str, grpc.Channel]
) -> None:
    """Systematic, next to the random search: every field of a valid request, one at a time."""
    call = channels[rpc.service].unary_unary(
        rpc.path,
        request_serializer=rpc.request.SerializeToString,
        response_deserializer=rpc.response.FromString,
    )
    template = shop.seed.templates[rpc.name]
    paths = [path for path, _, _ in _leaf_fields(template)]
    assert paths, rpc
    for path in paths:
        fd = next(f for p, _, f in _leaf_fields(template) if p == path)
        if fd.type == FD.TYPE_STRING:
            values: list[Any] = STRING_SWEEP
        elif fd.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
            values = INT64_SWEEP
        else:
            values = INT_SWEEP
        for value in values:
            request = type(template)()
            request.CopyFrom(template)
            holder = next(m for p, m, _ in _leaf_fields(request) if p == path)
            setattr(holder, fd.name, value)
            try:
                call(request, timeout=10)
                code, err = grpc.StatusCode.OK, None
            except grpc.RpcError as exc:
                code, err = exc.code(), exc  # type: ignore[attr-defined]
            _check(code, err, rpc, f"{path}={value!r:.40}")


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_undecodable_bodies_are_invalid_argument(
    rpc: Rpc, shop: Shop, channels: dict[str, grpc.Channel]
) -> None:
    call = channels[rpc.service].unary_unary(
        rpc.path, request_serializer=None, response_deserializer=None
    )  # raw bytes both ways

    @settings(max_examples=EXAMPLES // 2, deadline=None, database=None)
    @given(st.binary(max_size=64))
    def check(body: bytes) -> None:
        try:
            call(body, timeout=10)
            code, err = grpc.StatusCode.OK, None
        except grpc.RpcError as exc:
            code, err = exc.code(), exc  # type: ignore[attr-defined]
        _check(code, err, rpc, body)

    check()
    # A tag without its value, and a truncated varint tag: never a valid message.
    for body in (b"\x08", b"\xff\xff\xff"):
        with pytest.raises(grpc.RpcError) as err:
            call(body, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_servers_still_serving(shop: Shop, channels: dict[str, grpc.Channel]) -> None:
    for name, channel in channels.items():
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
