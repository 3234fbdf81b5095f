"""The inventory service's database: products, stock levels, reservations, events.

Stock never goes negative, also under concurrent reservations: a reservation takes
each line with one conditional UPDATE

    UPDATE products SET available = available - :q, reserved = reserved + :q
    WHERE product_id = :id AND available >= :q

and all lines of one saga run in one transaction, in product-id order (two sagas
reserving overlapping products lock rows in the same order on PostgreSQL, so they
cannot deadlock). A line that matches no row rolls the whole reservation back.
PostgreSQL re-checks the WHERE clause on the latest row version after waiting for
a concurrent writer; SQLite runs one writer at a time. A CHECK constraint backs it
up in the schema.

Every write transaction starts with a write statement: with SQLite's driver a
transaction begins at the first INSERT/UPDATE/DELETE, so reads after it see a
state no other writer can change before the commit.

Sales: `order.completed` (services/inventory/events.py) appends one `sales` row per
line of the order, in the transaction that records the event id in the inbox, so a
redelivered event adds nothing. The rows are a ledger (append-only, no natural
key): being once per event is the inbox's job, one mechanism rather than two that
could disagree. Each row keeps the trace id of the order's CreateOrder call.

Reservations are keyed by saga id, which makes every reservation RPC idempotent:
- reserve: a saga that already has a reservation gets it back, nothing more taken;
- confirm: HELD -> CONFIRMED (the reserved units leave for good), again = no-op;
- release: HELD -> RELEASED (units back to available), again = no-op; releasing a
  saga that never reserved records an empty RELEASED reservation, so a reserve
  arriving late (a retry overtaken by the compensation) takes nothing;
- return: HELD or CONFIRMED -> RETURNED (a sale undone: units back to available),
  again = no-op, so a cancelled order's units come back exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shop.events.v1 import events_pb2
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    case,
    false,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from base.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from mesh.db import Migration, schema
from mesh.db_lean import lean
from mesh.events import Outbox, inbox_migrations, new_envelope, outbox_migrations
from services.common.event_types import EVENTS
from services.common.money import Amount
from services.common.timestamps import as_utc, utcnow
from services.inventory.validation import MAX_LINES, MAX_STOCK, Line, NewProduct

SOURCE = "inventory"

HELD = "HELD"
CONFIRMED = "CONFIRMED"
RELEASED = "RELEASED"
RETURNED = "RETURNED"

# Frozen: a released migration is never edited (see mesh/db.py); the store's
# tables are the replay of these (`Tables`).


def _products_v1(md: MetaData) -> Table:
    return Table(
        "products",
        md,
        Column("product_id", String(36), primary_key=True),
        Column("sku", String(64), nullable=False, unique=True),
        Column("name", String(200), nullable=False),
        Column("price_currency", String(3), nullable=False),
        Column("price_minor", BigInteger, nullable=False),
        Column("available", BigInteger, nullable=False),
        Column("reserved", BigInteger, nullable=False),
        Column("low_stock_notified", Boolean, nullable=False, server_default=false()),
        Column("created_at", DateTime(timezone=True), nullable=False),
        CheckConstraint("price_minor > 0", name="ck_products_price_minor"),
        CheckConstraint("available >= 0", name="ck_products_available"),
        CheckConstraint("reserved >= 0", name="ck_products_reserved"),
    )


def _reservations_v1(md: MetaData) -> Table:
    return Table(
        "reservations",
        md,
        Column("saga_id", String(36), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("reason", String(500), nullable=False, server_default=""),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )


def _reservation_items_v1(md: MetaData) -> Table:
    return Table(
        "reservation_items",
        md,
        Column("saga_id", String(36), ForeignKey("reservations.saga_id"), primary_key=True),
        Column("product_id", String(36), ForeignKey("products.product_id"), primary_key=True),
        Column("quantity", BigInteger, nullable=False),
        Column("unit_price_currency", String(3), nullable=False),
        Column("unit_price_minor", BigInteger, nullable=False),
        CheckConstraint("quantity > 0", name="ck_reservation_items_quantity"),
    )


def _sales_v2(md: MetaData) -> Table:
    return Table(
        "sales",
        md,
        Column("event_id", String(64), nullable=False),
        Column("order_id", String(36), nullable=False),
        Column("product_id", String(36), nullable=False),
        Column("quantity", BigInteger, nullable=False),
        Column("trace_id", String(32), nullable=False, server_default=""),
        Column("sold_at", DateTime(timezone=True), nullable=False),
        CheckConstraint("quantity > 0", name="ck_sales_quantity"),
        Index("ix_sales_order", "order_id"),
        Index("ix_sales_product", "product_id"),
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="products and reservations",
        creates=(_products_v1, _reservations_v1, _reservation_items_v1),
        compatible_with_previous=True,  # new tables
    ),
    Migration(
        version=2,
        name="sales ledger",
        creates=(_sales_v2,),
        compatible_with_previous=True,  # a new table
    ),
)


def migrations() -> list[Migration]:
    return [*MIGRATIONS, *outbox_migrations(), *inbox_migrations()]


class Tables:
    """The inventory tables as the migrations leave them (one model per store)."""

    def __init__(self) -> None:
        md = schema(MIGRATIONS)
        self.products = md.tables["products"]
        self.reservations = md.tables["reservations"]
        self.items = md.tables["reservation_items"]
        self.sales = md.tables["sales"]


@dataclass(frozen=True, slots=True)
class ProductRow:
    product_id: str
    sku: str
    name: str
    price: Amount
    available: int
    reserved: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ReservedLine:
    product_id: str
    quantity: int
    unit_price: Amount


@dataclass(frozen=True, slots=True)
class Reservation:
    saga_id: str
    status: str
    items: tuple[ReservedLine, ...]


@dataclass(frozen=True, slots=True)
class Sale:
    """A completed order as inventory records it (from `order.completed`)."""

    event_id: str
    order_id: str
    lines: tuple[tuple[str, int], ...]  # (product id, units)
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class Availability:
    product_id: str
    requested: int
    available: int

    @property
    def sufficient(self) -> bool:
        return self.available >= self.requested


def _event_lines(lines: Sequence[ReservedLine]) -> list[events_pb2.EventLine]:
    return [events_pb2.EventLine(product_id=x.product_id, quantity=x.quantity) for x in lines]


class InventoryStore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        *,
        low_stock_threshold: int,
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._threshold = low_stock_threshold
        self._t = Tables()
        p = self._t.products.c
        self._product_cols = (p.product_id, p.sku, p.name, p.price_currency, p.price_minor,
                              p.available, p.reserved, p.created_at)  # fmt: skip
        # The statements of every order (reserve, confirm) and of the edge's hottest read
        # (GetProduct) are built once, with bound parameters: building a Core statement
        # and its cache key per call cost about as much CPU as running it (py-spy --gil,
        # bench orders; GetProduct's read 410 -> 270 us of CPU, measured apart).
        # Marked lean (mesh.db_lean): compiled once, run as driver SQL; rows read by name.
        self._get_product = lean(
            select(*self._product_cols).where(p.product_id == bindparam("pid"))
        )
        r, i = self._t.reservations.c, self._t.items.c
        self._insert_reservation = lean(insert(self._t.reservations))
        self._insert_items = lean(insert(self._t.items))
        q = bindparam("q", type_=BigInteger)
        self._take_stock = lean(
            update(self._t.products)
            .where(p.product_id == bindparam("pid"), p.available >= q)
            .values(available=p.available - q, reserved=p.reserved + q)
            .returning(p.price_currency, p.price_minor)
        )
        # Confirming takes the units out of `reserved`; RETURNING what the low-stock
        # check needs, instead of a SELECT after the updates. The flag is read as the
        # driver gives it (0/1 on SQLite, a bool on PostgreSQL; only its truth is used):
        # as a Boolean, SQLite would convert it, which keeps a statement off the lean path.
        self._sell_reserved = lean(
            update(self._t.products)
            .where(p.product_id == bindparam("pid"))
            .values(reserved=p.reserved - q)
            .returning(
                p.product_id,
                p.sku,
                p.available,
                type_coerce(p.low_stock_notified, Integer).label("low_stock_notified"),
            )
        )
        self._set_status_from_held = lean(
            update(self._t.reservations)
            .where(r.saga_id == bindparam("sid"), r.status == HELD)
            .values(status=bindparam("new_status"), updated_at=bindparam("now"))
        )
        self._read_status = lean(select(r.status).where(r.saga_id == bindparam("sid")))
        self._read_items = lean(
            select(i.product_id, i.quantity, i.unit_price_currency, i.unit_price_minor)
            .where(i.saga_id == bindparam("sid"))
            .order_by(i.product_id)
        )
        # The sale of every `order.completed` (the inbox transaction): the ledger insert,
        # and the low-stock check per number of products (`_low_stock_check`).
        self._insert_sales = lean(insert(self._t.sales))
        self._low_stock_checks: dict[int, Any] = {}

    # -- products --------------------------------------------------------------

    @staticmethod
    def _product(r: Any) -> ProductRow:
        """A row selected with `_product_cols`."""
        return ProductRow(r.product_id, r.sku, r.name, Amount(r.price_currency, r.price_minor),
                          r.available, r.reserved, as_utc(r.created_at))  # fmt: skip

    async def create_product(self, new: NewProduct) -> ProductRow:
        row = ProductRow(str(uuid.uuid4()), new.sku, new.name, new.price,
                         new.initial_stock, 0, utcnow())  # fmt: skip
        try:
            async with self._sessions.begin() as s:
                await s.execute(insert(self._t.products).values(
                    product_id=row.product_id, sku=row.sku, name=row.name,
                    price_currency=row.price.currency, price_minor=row.price.minor,
                    available=row.available, reserved=0, low_stock_notified=False,
                    created_at=row.created_at))  # fmt: skip
        except IntegrityError:
            raise AlreadyExists(
                f"a product with SKU {new.sku!r} already exists",
                reason="SKU_TAKEN",
                metadata={"sku": new.sku},
            ) from None
        return row

    async def get_product(self, product_id: str) -> ProductRow:
        async with self._sessions() as s:
            found = (await s.execute(self._get_product, {"pid": product_id})).first()
        if found is None:
            raise _product_not_found(product_id)
        return self._product(found)

    async def list_products(self, after_sku: str | None, limit: int) -> list[ProductRow]:
        """Up to `limit` products ordered by SKU, after `after_sku`."""
        p = self._t.products.c
        query = select(*self._product_cols).order_by(p.sku).limit(limit)
        if after_sku is not None:
            query = query.where(p.sku > after_sku)
        async with self._sessions() as s:
            rows = (await s.execute(query)).all()
        return [self._product(r) for r in rows]

    async def add_stock(self, line: Line) -> ProductRow:
        p = self._t.products.c
        async with self._sessions.begin() as s:
            res = await s.execute(
                update(self._t.products)
                .where(p.product_id == line.product_id)
                .where(p.available + p.reserved <= MAX_STOCK - line.quantity)
                .values(
                    available=p.available + line.quantity,
                    # Back above the threshold: the next fall under it notifies again.
                    low_stock_notified=case(
                        (p.available + line.quantity >= self._threshold, False),
                        else_=p.low_stock_notified,
                    ),
                )
            )
            found = (
                await s.execute(select(*self._product_cols).where(p.product_id == line.product_id))
            ).first()
            if found is None:
                raise _product_not_found(line.product_id)
            if not getattr(res, "rowcount", 0):
                raise FailedPrecondition(
                    f"product {line.product_id} cannot hold more than {MAX_STOCK} units",
                    reason="STOCK_LIMIT",
                    metadata={"product_id": line.product_id},
                )
        return self._product(found)

    async def availability(self, lines: Sequence[Line]) -> list[Availability]:
        p = self._t.products.c
        ids = [line.product_id for line in lines]
        async with self._sessions() as s:
            rows = (
                await s.execute(select(p.product_id, p.available).where(p.product_id.in_(ids)))
            ).all()
        available = {r.product_id: r.available for r in rows}
        for line in lines:
            if line.product_id not in available:
                raise _product_not_found(line.product_id)
        return [Availability(x.product_id, x.quantity, available[x.product_id]) for x in lines]

    # -- reservations ------------------------------------------------------------

    async def reservation(self, saga_id: str) -> Reservation | None:
        async with self._sessions() as s:
            return await self._read_reservation(s, saga_id)

    async def _read_reservation(self, s: AsyncSession, saga_id: str) -> Reservation | None:
        status = await s.scalar(self._read_status, {"sid": saga_id})
        if status is None:
            return None
        return Reservation(saga_id, status, await self._reserved_lines(s, saga_id))

    async def _reserved_lines(self, s: AsyncSession, saga_id: str) -> tuple[ReservedLine, ...]:
        rows = (await s.execute(self._read_items, {"sid": saga_id})).all()
        return tuple(
            ReservedLine(
                x.product_id, x.quantity, Amount(x.unit_price_currency, x.unit_price_minor)
            )
            for x in rows
        )

    async def reserve(self, saga_id: str, lines: Sequence[Line]) -> Reservation:
        """Take stock for every line, all or nothing; the saga's existing reservation if any.

        The usual call is the saga's first: the reservation row's insert (its primary key
        is the saga id) is the check, and the existing one is read only when it is there."""
        try:
            return await self._reserve(saga_id, lines)
        except IntegrityError:
            # Reserved (or released) before, or a concurrent call with the same saga id
            # won the primary key.
            existing = await self.reservation(saga_id)
            if existing is None:
                raise
            return existing

    async def _reserve(self, saga_id: str, lines: Sequence[Line]) -> Reservation:
        p, now = self._t.products.c, utcnow()
        ordered = sorted(lines, key=lambda x: x.product_id)
        async with self._sessions.begin() as s:
            await s.execute(self._insert_reservation, {
                "saga_id": saga_id, "status": HELD, "reason": "", "created_at": now,
                "updated_at": now})  # fmt: skip
            prices: dict[str, Amount] = {}
            for line in ordered:
                # RETURNING the price: no second statement to read it.
                taken = (await s.execute(
                    self._take_stock, {"pid": line.product_id, "q": line.quantity}
                )).first()  # fmt: skip
                if taken is not None:
                    prices[line.product_id] = Amount(taken.price_currency, taken.price_minor)
                else:
                    available = await s.scalar(
                        select(p.available).where(p.product_id == line.product_id)
                    )
                    if available is None:
                        raise _product_not_found(line.product_id)
                    raise FailedPrecondition(
                        f"insufficient stock for product {line.product_id}: "
                        f"requested {line.quantity}, available {available}",
                        reason="INSUFFICIENT_STOCK",
                        metadata={
                            "product_id": line.product_id,
                            "requested": str(line.quantity),
                            "available": str(available),
                        },
                    )
            reserved = tuple(
                ReservedLine(x.product_id, x.quantity, prices[x.product_id]) for x in ordered
            )
            await s.execute(self._insert_items, [
                {"saga_id": saga_id, "product_id": x.product_id, "quantity": x.quantity,
                 "unit_price_currency": x.unit_price.currency,
                 "unit_price_minor": x.unit_price.minor}
                for x in reserved
            ])  # fmt: skip
            await self._outbox.add(s, new_envelope(
                events_pb2.InventoryReserved(saga_id=saga_id, items=_event_lines(reserved)),
                types=EVENTS, source=SOURCE, subject=saga_id))  # fmt: skip
        return Reservation(saga_id, HELD, reserved)

    async def _set_status(
        self, s: AsyncSession, saga_id: str, status: str, reason: str, *, from_status: str = HELD
    ) -> bool:
        """`from_status` (HELD) -> status; False when the reservation is missing or not
        `from_status`. The usual confirm (HELD, no reason) runs a statement built once."""
        if reason or from_status != HELD:
            r = self._t.reservations.c
            res = await s.execute(
                update(self._t.reservations)
                .where(r.saga_id == saga_id, r.status == from_status)
                .values(status=status, updated_at=utcnow(), reason=reason)
            )
        else:
            res = await s.execute(
                self._set_status_from_held, {"sid": saga_id, "new_status": status, "now": utcnow()}
            )
        return bool(getattr(res, "rowcount", 0))

    async def confirm(self, saga_id: str) -> Reservation:
        """HELD -> CONFIRMED: the reserved units leave for good; again = no-op.

        The usual call confirms a HELD reservation: its status UPDATE is the check, and
        the status is read only when it matches nothing (missing, released, confirmed
        before). Each line's UPDATE returns what the low-stock check needs."""
        async with self._sessions.begin() as s:
            current = await self.confirm_in(s, saga_id)
            if current is None:
                raise _reservation_not_found(saga_id)
            if current.status in (RELEASED, RETURNED):
                raise FailedPrecondition(
                    f"the reservation of saga {saga_id} was {current.status.lower()}",
                    reason=f"RESERVATION_{current.status}",
                    metadata={"saga_id": saga_id},
                )
        return current

    async def confirm_in(self, s: AsyncSession, saga_id: str) -> Reservation | None:
        """`confirm`'s work in `s`, refusing nothing: the reservation as it ends (CONFIRMED,
        or RELEASED or RETURNED as it was), None when there is none. What the `order.completed`
        handler runs in its inbox transaction (a completed order's units are sold)."""
        if not await self._set_status(s, saga_id, CONFIRMED, ""):
            return await self._read_reservation(s, saga_id)  # confirmed before: no-op
        current = Reservation(saga_id, CONFIRMED, await self._reserved_lines(s, saga_id))
        sold = []
        for line in current.items:
            row = (
                await s.execute(self._sell_reserved, {"pid": line.product_id, "q": line.quantity})
            ).first()
            if row is not None:
                sold.append(row)
        low = [r for r in sold if r.available < self._threshold and not r.low_stock_notified]
        await self._notify_low(s, low)
        return current

    # -- sales -------------------------------------------------------------------

    async def record_sale(self, s: AsyncSession, sale: Sale) -> None:
        """Append the sale's lines to the ledger and emit any low-stock event still due,
        in `s` (the inbox transaction of the `order.completed` being handled).

        The units left stock when the reservation was confirmed (`confirm_in`, just
        before in the same transaction, or an earlier ConfirmReservation), which
        notified low stock for this crossing; the check here is the same flag-guarded
        one, so it adds an event only for a crossing nobody reported yet (a sale with
        no reservation here) and never a second one.
        """
        if not sale.lines:
            return
        now = utcnow()
        await s.execute(self._insert_sales, [
            {"event_id": sale.event_id, "order_id": sale.order_id, "product_id": product_id,
             "quantity": quantity, "trace_id": sale.trace_id, "sold_at": now}
            for product_id, quantity in sale.lines
        ])  # fmt: skip
        await self._notify_low_stock(s, sorted({product_id for product_id, _ in sale.lines}))

    async def _notify_low_stock(self, s: AsyncSession, product_ids: list[str]) -> None:
        """One `inventory.low_stock` per product that fell under the threshold since the last."""
        params = {f"pid{n}": product_id for n, product_id in enumerate(product_ids)}
        low = (await s.execute(self._low_stock_check(len(product_ids)), params)).all()
        await self._notify_low(s, low)

    def _low_stock_check(self, products: int) -> Any:
        """The SELECT of `_notify_low_stock` for that many products, built once per count:
        building it per event (in_(), coercions, its cache key) cost more CPU than running
        it (py-spy of an inventory process under `bench orders`), and one bound parameter
        per product, not an expanding list, spares SQLAlchemy's per-execution rewrite."""
        stmt = self._low_stock_checks.get(products)
        if stmt is None:
            p = self._t.products.c
            stmt = (
                select(p.product_id, p.sku, p.available)
                .where(p.product_id.in_([bindparam(f"pid{n}") for n in range(products)]))
                .where(p.available < self._threshold, p.low_stock_notified.is_(False))
                .order_by(p.product_id)
            )
            if products <= MAX_LINES:  # an event's count is not bounded: keep sane ones
                self._low_stock_checks[products] = lean(stmt)
        return stmt

    async def _notify_low(self, s: AsyncSession, low: Sequence[Any]) -> None:
        """Flag `low` (rows with product_id, sku, available: products under the threshold
        not notified yet, by product id) and add their `inventory.low_stock` events."""
        if not low:
            return
        p = self._t.products.c
        await s.execute(
            update(self._t.products)
            .where(p.product_id.in_([r.product_id for r in low]))
            .values(low_stock_notified=True)
        )
        await self._outbox.add_many(s, [
            new_envelope(
                events_pb2.InventoryLowStock(product_id=r.product_id, sku=r.sku,
                                             available=r.available, threshold=self._threshold),
                types=EVENTS, source=SOURCE, subject=r.product_id)
            for r in low
        ])  # fmt: skip

    async def release(self, saga_id: str, reason: str) -> Reservation:
        for _ in range(3):
            try:
                return await self._release(saga_id, reason)
            except IntegrityError:
                # Our tombstone lost to a concurrent reserve or release of the saga:
                # run again against what it wrote.
                continue
        raise Aborted(f"release of saga {saga_id} kept conflicting; retry", reason="CONFLICT")

    async def _release(self, saga_id: str, reason: str) -> Reservation:
        now = utcnow()
        async with self._sessions.begin() as s:
            changed = await self._set_status(s, saga_id, RELEASED, reason)
            current = await self._read_reservation(s, saga_id)
            if current is None:
                # Compensation before (or instead of) the reservation: remember the
                # saga as released so a late reserve takes nothing.
                await s.execute(insert(self._t.reservations).values(
                    saga_id=saga_id, status=RELEASED, reason=reason,
                    created_at=now, updated_at=now))  # fmt: skip
                return Reservation(saga_id, RELEASED, ())
            if not changed:
                if current.status == CONFIRMED:
                    raise FailedPrecondition(
                        f"the reservation of saga {saga_id} was confirmed; its stock is sold",
                        reason="RESERVATION_CONFIRMED",
                        metadata={"saga_id": saga_id},
                    )
                return current  # released before: no-op
            await self._back_in_stock(s, current.items, from_reserved=True)
            await self._outbox.add(s, new_envelope(
                events_pb2.InventoryReleased(saga_id=saga_id, items=_event_lines(current.items),
                                             reason=reason),
                types=EVENTS, source=SOURCE, subject=saga_id))  # fmt: skip
        return current

    async def return_sold(self, saga_id: str, reason: str) -> Reservation:
        """HELD or CONFIRMED -> RETURNED: the sale is undone and its units are available
        again, all lines in one transaction; again = no-op, since the status is the key
        (AddStock per line, which this replaces for a cancel, added the units a second
        time when the caller died between a line's call and its record). A RELEASED
        reservation is answered as it is: its units came back when it was released.

        Not held to MAX_STOCK: the units were this product's own, and AddStock's limit is
        on what an admin adds (a cancel refused at the limit left its order refunded but
        not cancelled). A product can exceed the limit only by units it sold, far inside
        int64."""
        async with self._sessions.begin() as s:
            held = await self._set_status(s, saga_id, RETURNED, reason)
            if not held and not await self._set_status(
                s, saga_id, RETURNED, reason, from_status=CONFIRMED
            ):
                current = await self._read_reservation(s, saga_id)
                if current is None:
                    raise _reservation_not_found(saga_id)
                return current  # returned before, or released: its units are back
            current = Reservation(saga_id, RETURNED, await self._reserved_lines(s, saga_id))
            # Held units leave `reserved` too (the sale was never confirmed here).
            await self._back_in_stock(s, current.items, from_reserved=held)
            await self._outbox.add(s, new_envelope(
                events_pb2.InventoryReturned(saga_id=saga_id, items=_event_lines(current.items),
                                             reason=reason),
                types=EVENTS, source=SOURCE, subject=saga_id))  # fmt: skip
        return current

    async def _back_in_stock(
        self, s: AsyncSession, lines: Sequence[ReservedLine], *, from_reserved: bool
    ) -> None:
        """Each line's units available again (taken from `reserved` when they were held
        there); a product back at or above the threshold may report low stock again."""
        p = self._t.products.c
        for line in lines:
            await s.execute(
                update(self._t.products)
                .where(p.product_id == line.product_id)
                .values(
                    available=p.available + line.quantity,
                    reserved=p.reserved - (line.quantity if from_reserved else 0),
                    low_stock_notified=case(
                        (p.available + line.quantity >= self._threshold, False),
                        else_=p.low_stock_notified,
                    ),
                )
            )


def _reservation_not_found(saga_id: str) -> NotFound:
    return NotFound(
        f"saga {saga_id} has no reservation",
        reason="RESERVATION_NOT_FOUND",
        metadata={"saga_id": saga_id},
    )


def _product_not_found(product_id: str) -> NotFound:
    return NotFound(
        f"product {product_id} not found",
        reason="PRODUCT_NOT_FOUND",
        metadata={"product_id": product_id},
    )
