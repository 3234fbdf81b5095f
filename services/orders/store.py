"""The orders database: orders, their lines, status history and idempotency keys.

Both API versions read and write these same tables. Besides them the database
holds the saga table (`mesh.saga`), the outbox (events commit with the state
change) and the inbox (handled event ids).

Times are integer microseconds since the epoch (`*_us`): list pages are keyed on
(created_us, order_id), and an integer compares and round-trips exactly on
SQLite and PostgreSQL alike, where timestamps differ in zone handling and text
form.

The hot path's statements (`insert_order`, `set_item_prices`, `get`, the key's insert
and read, every status change) are built once per store with bound parameters:
building Core statements per call cost more CPU than running them (py-spy --gil on
an orders process under `bench orders`).

Every status change goes through one conditional UPDATE of the order row that
also bumps `history_len`; the history row takes that number as its position.
The UPDATE takes the row lock first (PostgreSQL), so the saga and an event
handler touching one order at once append history one after the other, never
with the same position.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.db import Migration, lock_until_end, schema
from mesh.db_lean import lean
from mesh.events import inbox_migrations, outbox_migrations
from mesh.saga import saga_migrations
from services.orders.model import (
    IN_FLIGHT,
    PROGRESS,
    Address,
    Line,
    Order,
    OrderStatus,
    StatusChange,
)

# Transitions that record their reason in `failure_reason` as well.
_REASONED = (OrderStatus.FAILED, OrderStatus.CANCELLED)
# The lock scope that keeps `create_order` and the `user.deleted` handler from both
# missing each other (`record_user_deleted`, `user_deleted`).
_USER_DELETION = "orders.user_deletion"


def now_us() -> int:
    return time.time_ns() // 1000


# Frozen: a released migration is never edited (see mesh/db.py); the store's
# tables are the replay of these (`Tables`).


def _orders_v1(md: MetaData) -> Table:
    return Table(
        "orders",
        md,
        Column("order_id", String(36), primary_key=True),
        Column("saga_id", String(128), nullable=False, unique=True),
        Column("user_id", String(36), nullable=False),
        Column("status", String(16), nullable=False),
        Column("currency", String(3), nullable=False),
        Column("total_minor", BigInteger, nullable=False),
        Column("failure_reason", Text, nullable=False),
        Column("card_last4", String(4), nullable=False),
        Column("payment_id", String(64), nullable=False),
        # JSON of the v2 address; NULL for v1 orders.
        Column("shipping", Text, nullable=True),
        # Set when the order must not complete (its user was deleted); the
        # saga's next local step sees it and compensates.
        Column("cancel_reason", Text, nullable=True),
        # The saga that cancels a completed order (CancelOrder), if one ran.
        Column("cancel_saga_id", String(128), nullable=True),
        Column("history_len", Integer, nullable=False),
        Column("created_us", BigInteger, nullable=False),
        Column("updated_us", BigInteger, nullable=False),
        Index("ix_orders_user_created", "user_id", "created_us", "order_id"),
    )


def _order_items_v1(md: MetaData) -> Table:
    return Table(
        "order_items",
        md,
        Column(
            "order_id",
            String(36),
            ForeignKey("orders.order_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("position", Integer, primary_key=True),
        Column("product_id", String(36), nullable=False),
        Column("quantity", BigInteger, nullable=False),
        Column("unit_price_minor", BigInteger, nullable=True),
        # When the line's units went back to stock (cancellation); NULL before.
        Column("restocked_us", BigInteger, nullable=True),
    )


def _order_status_history_v1(md: MetaData) -> Table:
    return Table(
        "order_status_history",
        md,
        Column(
            "order_id",
            String(36),
            ForeignKey("orders.order_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("position", Integer, primary_key=True),
        Column("status", String(16), nullable=False),
        Column("reason", Text, nullable=False),
        Column("at_us", BigInteger, nullable=False),
    )


def _order_idempotency_keys_v1(md: MetaData) -> Table:
    # v2 CreateOrder keys, scoped to the user: the primary key is what makes
    # two concurrent requests with one key place one order.
    return Table(
        "order_idempotency_keys",
        md,
        Column("user_id", String(36), primary_key=True),
        Column("idempotency_key", String(128), primary_key=True),
        # The saga (= order id) currently answering for the key.
        Column("saga_id", String(128), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("created_us", BigInteger, nullable=False),
    )


def _deleted_users_v2(md: MetaData) -> Table:
    # Ids from `user.deleted`: the saga refuses them although this process may
    # remember users confirming them (services/orders/known_users.py).
    return Table(
        "deleted_users",
        md,
        Column("user_id", String(36), primary_key=True),
        Column("deleted_us", BigInteger, nullable=False),
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="orders, items, status history, idempotency keys",
        creates=(_orders_v1, _order_items_v1, _order_status_history_v1, _order_idempotency_keys_v1),
        compatible_with_previous=True,  # new tables
    ),
    Migration(
        version=2,
        name="deleted users",
        creates=(_deleted_users_v2,),
        compatible_with_previous=True,  # a new table
    ),
)


def migrations() -> list[Migration]:
    return [*MIGRATIONS, *outbox_migrations(), *inbox_migrations(), *saga_migrations()]


class Tables:
    """The orders tables as the migrations leave them (built per store, no module globals)."""

    def __init__(self) -> None:
        self.metadata = md = schema(MIGRATIONS)
        self.orders = md.tables["orders"]
        self.items = md.tables["order_items"]
        self.history = md.tables["order_status_history"]
        self.keys = md.tables["order_idempotency_keys"]
        self.deleted_users = md.tables["deleted_users"]


@dataclass(frozen=True, slots=True)
class NewOrder:
    order_id: str
    saga_id: str
    user_id: str
    lines: Sequence[Line]
    currency: str
    card_last4: str
    shipping: Address | None


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The saga answering for an idempotency key, and the fingerprint of the request
    that first used it."""

    saga_id: str
    fingerprint: str


class KeyTaken(Exception):
    """`insert_key` found the (user, key) already recorded. Raised inside the caller's
    transaction so that it rolls back: the saga row (and anything else it wrote) is not
    left behind; the caller then reads the key's holder (`find_key`)."""

    def __init__(self, user_id: str, key: str) -> None:
        super().__init__(f"idempotency key {key!r} of user {user_id} is taken")
        self.user_id = user_id
        self.key = key


@dataclass(frozen=True, slots=True)
class OrderHead:
    """The columns a saga step decides on, read inside its transaction."""

    status: OrderStatus
    cancel_reason: str | None
    cancel_saga_id: str | None


def _chunks(ids: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    # IN lists stay under SQLite's bound-parameter limit (v1 lists every order).
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _address_json(a: Address | None) -> str | None:
    if a is None:
        return None
    return json.dumps(
        {"recipient": a.recipient, "lines": list(a.lines), "city": a.city,
         "postal_code": a.postal_code, "country_code": a.country_code},
        separators=(",", ":"),
    )  # fmt: skip


def _address(raw: str | None) -> Address | None:
    if not raw:
        return None
    d = json.loads(raw)
    return Address(d["recipient"], tuple(d["lines"]), d["city"], d["postal_code"],
                   d["country_code"])  # fmt: skip


class OrdersStore:
    """Reads open their own session; writes a saga step makes take the step's session."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.t = Tables()
        self._transitions: dict[tuple[Any, ...], Any] = {}
        # Built once (see the module docstring); executed with parameter dicts.
        t, i, k = self.t, self.t.items.c, self.t.keys.c
        # Marked lean (mesh.db_lean): compiled once, run as driver SQL; rows read by name.
        self._order_insert = lean(insert(t.orders))
        self._items_insert = lean(insert(t.items))
        self._history_insert = lean(insert(t.history))
        self._price_update = lean(
            update(t.items)
            .where(i.order_id == bindparam("p_order"), i.product_id == bindparam("p_product"))
            .values(unit_price_minor=bindparam("p_price"))
        )
        self._key_insert = lean(
            text(
                "INSERT INTO order_idempotency_keys"
                " (user_id, idempotency_key, saga_id, fingerprint, created_us)"
                " VALUES (:u, :k, :s, :f, :t) ON CONFLICT DO NOTHING"
            )
        )
        self._key_select = lean(
            select(k.saga_id, k.fingerprint).where(
                k.user_id == bindparam("u"), k.idempotency_key == bindparam("k")
            )
        )
        self._get = lean(self._get_statement())
        self._deleted_user_insert = lean(
            text(
                "INSERT INTO deleted_users (user_id, deleted_us)"
                " VALUES (:u, :t) ON CONFLICT DO NOTHING"
            )
        )
        d = self.t.deleted_users.c
        self._deleted_user_select = lean(select(d.user_id).where(d.user_id == bindparam("u")))
        o = self.t.orders.c
        self._head = lean(
            select(o.status, o.cancel_reason, o.cancel_saga_id).where(
                o.order_id == bindparam("oid")
            )
        )
        self._setters: dict[tuple[str, ...], Any] = {}

    # -- writes inside a caller's transaction -----------------------------------------

    async def insert_order(self, s: AsyncSession, new: NewOrder, at_us: int) -> None:
        """The order PENDING: its row, its lines (one executemany), its first history row."""
        await s.execute(
            self._order_insert,
            {"order_id": new.order_id, "saga_id": new.saga_id, "user_id": new.user_id,
             "status": OrderStatus.PENDING.value, "currency": new.currency, "total_minor": 0,
             "failure_reason": "", "card_last4": new.card_last4, "payment_id": "",
             "shipping": _address_json(new.shipping), "cancel_reason": None,
             "cancel_saga_id": None, "history_len": 1, "created_us": at_us,
             "updated_us": at_us},
        )  # fmt: skip
        await s.execute(
            self._items_insert,
            [{"order_id": new.order_id, "position": i, "product_id": line.product_id,
              "quantity": line.quantity, "unit_price_minor": None, "restocked_us": None}
             for i, line in enumerate(new.lines)],
        )  # fmt: skip
        await s.execute(
            self._history_insert,
            {"order_id": new.order_id, "position": 1, "status": OrderStatus.PENDING.value,
             "reason": "", "at_us": at_us},
        )  # fmt: skip

    async def insert_key(
        self, s: AsyncSession, user_id: str, key: str, saga_id: str, fingerprint: str
    ) -> None:
        """Record (user, key) → saga in the caller's transaction (the one inserting the
        saga row), or raise `KeyTaken` when the key exists, so that the transaction rolls
        back and leaves no saga behind. The primary key decides between concurrent
        requests: on PostgreSQL the second waits for the first's commit (and inserts if
        it rolled back); on SQLite writers take turns anyway."""
        res = await s.execute(
            self._key_insert,
            {"u": user_id, "k": key, "s": saga_id, "f": fingerprint, "t": now_us()},
        )
        if not getattr(res, "rowcount", 0):
            raise KeyTaken(user_id, key)

    async def head(self, s: AsyncSession, order_id: str) -> OrderHead | None:
        row = (await s.execute(self._head, {"oid": order_id})).first()
        if row is None:
            return None
        return OrderHead(OrderStatus(row.status), row.cancel_reason, row.cancel_saga_id)

    async def transition(
        self,
        s: AsyncSession,
        order_id: str,
        to: OrderStatus,
        *,
        allowed_from: Iterable[OrderStatus],
        reason: str = "",
        at_us: int | None = None,
        values: Mapping[str, Any] | None = None,
        uncancelled: bool = False,
    ) -> bool:
        """Move the order to `to` if it is in `allowed_from` (and, with `uncancelled`, not
        flagged for cancellation), recording the change in its history; False (nothing
        written) when it is not."""
        at = now_us() if at_us is None else at_us
        values = values or {}
        stmt = self._transition_stmt(to, tuple(allowed_from), uncancelled, tuple(sorted(values)))
        params: dict[str, Any] = {"t_id": order_id, "t_at": at}
        if to in _REASONED:
            params["t_reason"] = reason
        params.update({f"v_{k}": v for k, v in values.items()})
        position = (await s.execute(stmt, params)).scalar_one_or_none()
        if position is None:
            return False
        await s.execute(
            self._history_insert,
            {"order_id": order_id, "position": position, "status": to.value, "reason": reason,
             "at_us": at},
        )  # fmt: skip
        return True

    def _transition_stmt(
        self,
        to: OrderStatus,
        allowed_from: tuple[OrderStatus, ...],
        uncancelled: bool,
        value_names: tuple[str, ...],
    ) -> Any:
        """The conditional UPDATE of `transition`, built once per shape with bound
        parameters: building it per call (values(), in_(), coercions) cost more CPU than
        running it (py-spy --gil on an orders process under `bench orders`)."""
        key = (to, allowed_from, uncancelled, value_names)
        stmt = self._transitions.get(key)
        if stmt is None:
            c = self.t.orders.c
            sets: dict[str, Any] = {
                "status": to.value,
                "updated_us": bindparam("t_at"),
                "history_len": c.history_len + 1,
                **{name: bindparam(f"v_{name}") for name in value_names},
            }
            if to in _REASONED:
                sets["failure_reason"] = bindparam("t_reason")
            # IN of one bound parameter per status, not a list of values: SQLAlchemy renders
            # a list as an "expanding" parameter and rewrites the SQL on every execution
            # (18 µs of CPU a statement, measured; three or four per order).
            statuses = [literal(f.value, String) for f in allowed_from]
            where = [c.order_id == bindparam("t_id"), c.status.in_(statuses)]
            if uncancelled:
                where.append(c.cancel_reason.is_(None))
            stmt = lean(update(self.t.orders).where(*where).values(**sets).returning(c.history_len))
            self._transitions[key] = stmt
        return stmt

    async def advance(
        self,
        s: AsyncSession,
        order_id: str,
        to: OrderStatus,
        *,
        values: Mapping[str, Any] | None = None,
        uncancelled: bool = False,
    ) -> bool:
        """Forward progress of a placement (PENDING → RESERVED → PAID → COMPLETED);
        a no-op when the order is already there or further (never backwards), or, with
        `uncancelled`, flagged for cancellation."""
        behind = [st for st in IN_FLIGHT if PROGRESS[st] < PROGRESS[to]]
        return await self.transition(
            s, order_id, to, allowed_from=behind, values=values, uncancelled=uncancelled
        )

    async def set_item_prices(
        self, s: AsyncSession, order_id: str, prices: Mapping[str, int]
    ) -> None:
        """Unit prices by product: one UPDATE run as an executemany (one statement for the
        driver however many lines; still one row update per line in the database)."""
        if not prices:
            return
        await s.execute(
            self._price_update,
            [{"p_order": order_id, "p_product": p, "p_price": price}
             for p, price in prices.items()],
        )  # fmt: skip

    async def set_values(self, s: AsyncSession, order_id: str, values: Mapping[str, Any]) -> None:
        """Set columns of the order row (e.g. `total_minor`, `payment_id`), status unchanged
        (a saga step whose advance found the order there already sets its values with
        this): built once per column set."""
        names = tuple(sorted(values))
        stmt = self._setters.get(names)
        if stmt is None:
            c = self.t.orders.c
            stmt = lean(
                update(self.t.orders)
                .where(c.order_id == bindparam("s_id"))
                .values(**{name: bindparam(f"v_{name}") for name in names})
            )
            self._setters[names] = stmt
        await s.execute(stmt, {"s_id": order_id, **{f"v_{k}": v for k, v in values.items()}})

    async def request_cancel_of_user(self, s: AsyncSession, user_id: str, reason: str) -> list[str]:
        """Flag the user's orders in flight so their sagas compensate; returns their ids."""
        c = self.t.orders.c
        res = await s.execute(
            update(self.t.orders)
            .where(
                c.user_id == user_id,
                c.status.in_([st.value for st in IN_FLIGHT]),
                c.cancel_reason.is_(None),
            )
            .values(cancel_reason=reason)
            .returning(c.order_id)
        )
        return [str(r) for r in res.scalars().all()]

    async def record_user_deleted(self, s: AsyncSession, user_id: str) -> None:
        """`user.deleted`: remember the id, so that no new order of it is created.

        Takes the user's deletion lock (exclusive) first: it waits for transactions
        that inserted an order of the user and checked `user_deleted` (they hold it
        shared) to end, so `request_cancel_of_user` after it in the same transaction
        sees their orders (PostgreSQL, read committed; see `mesh.db.lock_until_end`)."""
        await lock_until_end(s, _USER_DELETION, user_id)
        await s.execute(self._deleted_user_insert, {"u": user_id, "t": now_us()})

    async def user_deleted(self, s: AsyncSession, user_id: str) -> bool:
        """Whether `user.deleted` was handled for `user_id` (read in the caller's
        transaction: `create_order` asks after inserting the order). Holds the user's
        deletion lock shared until that transaction ends: a deletion being handled
        meanwhile either committed before (then this sees its record) or waits and
        then flags the order this transaction inserted."""
        await lock_until_end(s, _USER_DELETION, user_id, shared=True)
        return await s.scalar(self._deleted_user_select, {"u": user_id}) is not None

    # -- idempotency keys, cancel sagas, restocking (own transactions) ---------------------

    async def restocked(self, order_id: str) -> set[str]:
        """Products of the order whose units were already returned to stock."""
        i = self.t.items.c
        async with self.sessions() as s:
            rows = await s.execute(
                select(i.product_id).where(i.order_id == order_id, i.restocked_us.is_not(None))
            )
            return {str(r) for r in rows.scalars()}

    async def mark_restocked(self, order_id: str, product_id: str) -> None:
        i = self.t.items.c
        async with self.sessions.begin() as s:
            await s.execute(
                update(self.t.items)
                .where(i.order_id == order_id, i.product_id == product_id)
                .values(restocked_us=now_us())
            )

    async def find_key(self, user_id: str, key: str) -> KeyHolder | None:
        """The saga answering for (user, key), None if the key was never recorded."""
        async with self.sessions() as s:
            row = (await s.execute(self._key_select, {"u": user_id, "k": key})).first()
        return None if row is None else KeyHolder(str(row.saga_id), str(row.fingerprint))

    async def swap_key(self, user_id: str, key: str, old_saga: str, new_saga: str) -> bool:
        """Point the key at a new saga if it still points at `old_saga` (compare-and-set)."""
        k = self.t.keys.c
        async with self.sessions.begin() as s:
            res = await s.execute(
                update(self.t.keys)
                .where(k.user_id == user_id, k.idempotency_key == key, k.saga_id == old_saga)
                .values(saga_id=new_saga)
            )
        return bool(getattr(res, "rowcount", 0))

    async def cancel_saga_id(self, order_id: str) -> str | None:
        c = self.t.orders.c
        async with self.sessions() as s:
            found = await s.scalar(select(c.cancel_saga_id).where(c.order_id == order_id))
        return None if found is None else str(found)

    async def set_cancel_saga(self, order_id: str, old: str | None, new: str) -> bool:
        """Record the saga cancelling a completed order if the previous one is still `old`."""
        c = self.t.orders.c
        cond = c.cancel_saga_id.is_(None) if old is None else c.cancel_saga_id == old
        async with self.sessions.begin() as s:
            res = await s.execute(
                update(self.t.orders)
                .where(c.order_id == order_id, c.status == OrderStatus.COMPLETED.value, cond)
                .values(cancel_saga_id=new)
            )
        return bool(getattr(res, "rowcount", 0))

    # -- reads ---------------------------------------------------------------------------

    def _get_statement(self) -> Any:
        """`get`'s one query: the order row, its lines and its history as one UNION ALL
        (one statement instead of three; every CreateOrder answers with a `get`).

        Each branch fills the same columns: `k` (0 head, 1 line, 2 history), `pos`, text
        columns s1 to s8 and integer columns n1 to n3, NULL where a branch has nothing (typed
        NULLs, so PostgreSQL resolves each column's type). Rows come head first, then
        lines and history in position order."""
        o, i, h = self.t.orders.c, self.t.items.c, self.t.history.c
        oid: Any = bindparam("order_id")

        def row(k: int, pos: Any, texts: list[Any], ints: list[Any]) -> list[Any]:
            texts = texts + [cast(null(), Text) for _ in range(8 - len(texts))]
            ints = ints + [cast(null(), BigInteger) for _ in range(3 - len(ints))]
            return [
                literal_column(str(k), Integer).label("k"),
                pos.label("pos"),
                *(c.label(f"s{n + 1}") for n, c in enumerate(texts)),
                *(c.label(f"n{n + 1}") for n, c in enumerate(ints)),
            ]

        head_texts = [o.saga_id, o.user_id, o.status, o.currency, o.failure_reason,
                      o.card_last4, o.payment_id, o.shipping]  # fmt: skip
        head_ints = [o.total_minor, o.created_us, o.updated_us]
        head = select(*row(0, literal_column("0", Integer), head_texts, head_ints))
        lines = select(*row(1, i.position, [i.product_id], [i.quantity, i.unit_price_minor]))
        history = select(*row(2, h.position, [h.status, h.reason], [h.at_us]))
        return union_all(
            head.where(o.order_id == oid),
            lines.where(i.order_id == oid),
            history.where(h.order_id == oid),
        ).order_by(literal_column("k"), literal_column("pos"))

    async def get(self, order_id: str) -> Order | None:
        """The order with its lines and history (one statement), None if there is none."""
        async with self.sessions() as s:
            rows = (await s.execute(self._get, {"order_id": order_id})).all()
        if not rows or rows[0].k != 0:
            return None
        r = rows[0]
        lines = tuple(Line(x.s1, int(x.n1), x.n2) for x in rows if x.k == 1)
        history = tuple(StatusChange(OrderStatus(x.s1), int(x.n1), x.s2) for x in rows if x.k == 2)
        return Order(
            order_id=order_id,
            saga_id=r.s1,
            user_id=r.s2,
            lines=lines,
            currency=r.s4,
            total_minor=int(r.n1),
            status=OrderStatus(r.s3),
            history=history,
            shipping=_address(r.s8),
            failure_reason=r.s5,
            card_last4=r.s6,
            payment_id=r.s7,
            created_us=int(r.n2),
            updated_us=int(r.n3),
        )

    async def list_for_user(
        self, user_id: str, *, limit: int | None = None, after: tuple[int, str] | None = None
    ) -> list[Order]:
        """The user's orders, newest first; `after` is the (created_us, order_id) of the
        last order of the previous page."""
        c = self.t.orders.c
        where: list[Any] = [c.user_id == user_id]
        if after is not None:
            t, oid = after
            where.append(or_(c.created_us < t, and_(c.created_us == t, c.order_id < oid)))
        async with self.sessions() as s:
            return await self._load(s, where, limit=limit)

    async def _load(
        self, s: AsyncSession, where: list[Any], limit: int | None = None
    ) -> list[Order]:
        o, i, h = self.t.orders, self.t.items.c, self.t.history.c
        q = select(o).where(*where).order_by(o.c.created_us.desc(), o.c.order_id.desc())
        if limit is not None:
            q = q.limit(limit)
        heads = (await s.execute(q)).all()
        if not heads:
            return []
        ids = [r.order_id for r in heads]
        lines: dict[str, list[Line]] = {oid: [] for oid in ids}
        history: dict[str, list[StatusChange]] = {oid: [] for oid in ids}
        for chunk in _chunks(ids):
            for r in (
                await s.execute(
                    select(i.order_id, i.product_id, i.quantity, i.unit_price_minor)
                    .where(i.order_id.in_(chunk))
                    .order_by(i.order_id, i.position)
                )
            ).all():
                lines[r.order_id].append(Line(r.product_id, int(r.quantity), r.unit_price_minor))
            for r in (
                await s.execute(
                    select(h.order_id, h.status, h.reason, h.at_us)
                    .where(h.order_id.in_(chunk))
                    .order_by(h.order_id, h.position)
                )
            ).all():
                history[r.order_id].append(
                    StatusChange(OrderStatus(r.status), int(r.at_us), r.reason)
                )
        return [
            Order(
                order_id=r.order_id,
                saga_id=r.saga_id,
                user_id=r.user_id,
                lines=tuple(lines[r.order_id]),
                currency=r.currency,
                total_minor=int(r.total_minor),
                status=OrderStatus(r.status),
                history=tuple(history[r.order_id]),
                shipping=_address(r.shipping),
                failure_reason=r.failure_reason,
                card_last4=r.card_last4,
                payment_id=r.payment_id,
                created_us=int(r.created_us),
                updated_us=int(r.updated_us),
            )
            for r in heads
        ]
