"""The orders domain layer: what both servicers call.

Placing and cancelling run sagas (`services.orders.saga`). A saga runs in a task
detached from the incoming call: a caller that gives up (deadline, disconnect)
leaves it running to COMPLETED or COMPENSATED, and the caller's deadline is not
inherited by the saga's own calls (the mesh propagates incoming deadlines; a
compensation cut short by the caller's deadline would leave stock held).

v2 idempotency: `order_idempotency_keys` maps (user, key) to the saga answering
for it; its primary key decides between concurrent requests. The key row is
inserted by the saga's CREATED hook, in the transaction that inserts the saga row
(no transaction of its own): when the key is taken the hook raises `KeyTaken`,
that transaction rolls back (no saga, no order), and the request reads who holds
the key. A repeat gets the first saga's outcome: the order, or the same error. Only
a saga that failed for a transient reason (a dependency was down) and was fully
compensated lets the key start a new attempt, since UNAVAILABLE tells the client to
retry; that attempt's saga is pointed at by `swap_key` (compare-and-set) before it
starts, so a crash in between leaves a key whose saga never started, which the next
repeat starts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from base.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, ServiceError
from mesh.saga import (
    ErrorKind,
    SagaBusy,
    SagaConflict,
    SagaFailed,
    SagaResult,
    SagaRunner,
    SagaStatus,
)
from services.orders.config import OrdersConfig
from services.orders.model import Order, OrderStatus, Page, PlaceOrder
from services.orders.saga import CANCEL, PLACE, OrderSagas, place_data
from services.orders.store import KeyTaken, OrdersStore
from services.orders.upstream import UpstreamError, public_error

log = logging.getLogger(__name__)

_KEY_ROUNDS = 5
_BUSY_BACKOFF_MAX_S = 0.5


def _public(exc: BaseException) -> BaseException:
    """What the caller gets for an exception out of `SagaRunner.run`."""
    if isinstance(exc, SagaFailed):
        f = exc.failure
        return public_error(f.code, f.message, f.reason)
    if isinstance(exc, SagaConflict):
        return Aborted(exc.message, reason="SAGA_CONFLICT")
    if isinstance(exc, UpstreamError) and exc.violations:
        # An upstream refused a value orders passed on: say which, as it said.
        return InvalidArgument(exc.violations, reason=exc.reason or "INVALID_ARGUMENT")
    if isinstance(exc, ServiceError):
        return public_error(exc.code.name, exc.message, exc.reason)
    return exc


class Orders:
    def __init__(
        self,
        store: OrdersStore,
        runner: SagaRunner,
        sagas: OrderSagas,
        config: OrdersConfig,
    ) -> None:
        self.store = store
        self.runner = runner
        self.sagas = sagas
        self.config = config
        self._tasks: set[asyncio.Task[SagaResult]] = set()

    # -- reads ------------------------------------------------------------------------------

    async def get(self, order_id: str) -> Order:
        order = await self.store.get(order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND")
        return order

    async def list_all(self, user_id: str, limit: int | None = None) -> list[Order]:
        """The user's orders, newest first; at most `limit` of them."""
        return await self.store.list_for_user(user_id, limit=limit)

    async def page(self, user_id: str, size: int, after: tuple[int, str] | None) -> Page:
        found = await self.store.list_for_user(user_id, limit=size + 1, after=after)
        orders = tuple(found[:size])
        more = len(found) > size
        cursor: dict[str, str | int] | None = None
        if more:
            last = orders[-1]
            cursor = {"u": user_id, "t": last.created_us, "i": last.order_id}
        return Page(orders, cursor)

    # -- placing ------------------------------------------------------------------------------

    async def place(self, cmd: PlaceOrder) -> Order:
        if not cmd.idempotency_key:
            return await self._place_new(str(uuid.uuid4()), cmd)
        for _ in range(_KEY_ROUNDS):
            fresh = str(uuid.uuid4())
            try:
                # The usual case: a new key, recorded with the saga row (CREATED hook).
                return await self._place_new(fresh, cmd, key=True)
            except KeyTaken:
                pass  # rolled back: no saga, no order; follow whoever holds the key
            holder = await self.store.find_key(cmd.user_id, cmd.idempotency_key)
            if holder is None:  # pragma: no cover - keys are never deleted
                continue
            if holder.fingerprint != cmd.fingerprint:
                raise FailedPrecondition(
                    "this idempotency key was used for a different order; use a new key",
                    reason="IDEMPOTENCY_KEY_REUSED",
                )
            state = await self.runner.store.get(holder.saga_id)
            if state is None:
                # Swapped to a new attempt whose saga has not started (yet, or ever: a
                # crash in between). The key row exists already: start it without one.
                existing = await self.store.get(holder.saga_id)
                if existing is not None:
                    return existing
                return await self._place_new(holder.saga_id, cmd)
            failure = state.failure
            if (
                state.status is SagaStatus.COMPENSATED
                and failure is not None
                and failure.kind is ErrorKind.TRANSIENT
            ):
                if await self.store.swap_key(
                    cmd.user_id, cmd.idempotency_key, holder.saga_id, fresh
                ):
                    return await self._place_new(fresh, cmd)
                continue  # another retry swapped first: follow it
            # The first request's saga: its result, its failure, or wait for it.
            return await self._place_new(holder.saga_id, cmd)
        raise Aborted("the idempotency key kept changing hands; retry", reason="KEY_CONTENDED")

    async def _place_new(self, saga_id: str, cmd: PlaceOrder, *, key: bool = False) -> Order:
        """Run (or join) place saga `saga_id` and answer with its order or its failure.

        With `key`, a saga this call creates records `cmd`'s idempotency key in the
        transaction of its row, and `KeyTaken` (nothing created) is raised when the
        key is someone else's. Without it, a created saga records no key: the key row
        already points at `saga_id` (swapped), or there is none (v1)."""
        if self.sagas.cards.get(saga_id) is None:
            # A repeated request brings the card again: a saga resumed after a
            # restart can then still be charged.
            self.sagas.cards.put(saga_id, cmd.card)
        data = place_data(
            saga_id, cmd.user_id, cmd.lines, cmd.currency, cmd.card.last4, cmd.shipping,
            cmd.api_version, (cmd.idempotency_key, cmd.fingerprint) if key else None,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        # Dropped with the card once no task runs the saga here (`_forget`).
        waiter = self.sagas.failures.setdefault(saga_id, loop.create_future())
        result = await self._run(PLACE, saga_id, data, waiter)
        order = await self.store.get(str(result.data["order_id"]))
        if order is None:  # pragma: no cover - a completed saga created its order
            raise Aborted(f"order of saga {saga_id} vanished", reason="ORDER_MISSING")
        return order

    async def _run(
        self,
        name: str,
        saga_id: str,
        data: Mapping[str, Any],
        failed: asyncio.Future[tuple[str, str, str]] | None = None,
    ) -> SagaResult:
        """`runner.run` in a detached task; waits while another runner holds the saga.

        With `failed` (set when the saga records its failure), answers with the failure
        if the compensation that follows takes longer than `compensation_reply_s`."""
        delay = 0.05
        while True:
            # The drive runs without the incoming call's deadline (SagaRunner._spawn).
            task = asyncio.create_task(self.runner.run(name, saga_id, data), name=saga_id)
            self._tasks.add(task)
            task.add_done_callback(self._forget)
            try:
                return await self._outcome(task, failed)
            except KeyTaken:
                raise  # for `place`: the key's holder answers
            except SagaBusy:
                # Another instance (or request) holds the saga: wait for it to finish.
                await asyncio.sleep(delay)  # polling the saga row
                delay = min(delay * 2, _BUSY_BACKOFF_MAX_S)
            except Exception as exc:
                raise _public(exc) from exc

    async def _outcome(
        self, task: asyncio.Task[SagaResult], failed: asyncio.Future[tuple[str, str, str]] | None
    ) -> SagaResult:
        if failed is None:
            return await asyncio.shield(task)
        either: list[asyncio.Future[Any]] = [task, failed]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        # The saga failed and is compensating: normally quick, so the caller gets the
        # final state; a dependency that is down must not hold the answer back.
        done, _ = await asyncio.wait({task}, timeout=self.config.compensation_reply_s)
        if done:
            return task.result()
        code, message, reason = failed.result()
        raise public_error(code, message, reason)

    def _forget(self, task: asyncio.Task[SagaResult]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a detached saga's error is the caller's, not the loop's
        saga_id = task.get_name()
        if not any(t.get_name() == saga_id for t in self._tasks):
            self.sagas.cards.drop(saga_id)
            waiter = self.sagas.failures.pop(saga_id, None)
            if waiter is not None and not waiter.done():
                waiter.cancel()

    # -- cancelling ------------------------------------------------------------------------

    async def cancel(self, order_id: str, reason: str) -> Order:
        for _ in range(_KEY_ROUNDS):
            order = await self.get(order_id)
            if order.status is OrderStatus.CANCELLED:
                return order
            if order.status is OrderStatus.FAILED:
                raise FailedPrecondition(
                    f"order {order_id} failed and has nothing to cancel", reason="ORDER_FAILED"
                )
            if order.status.in_flight:
                raise FailedPrecondition(
                    f"order {order_id} is still being placed; cancel it once it completed",
                    reason="ORDER_IN_PROGRESS",
                )
            previous = await self.store.cancel_saga_id(order_id)
            saga_id = previous
            if previous is not None:
                state = await self.runner.store.get(previous)
                if state is not None and state.status is SagaStatus.COMPENSATED:
                    saga_id = None  # an earlier attempt failed: start another
            if saga_id is None:
                saga_id = str(uuid.uuid4())
                if not await self.store.set_cancel_saga(order_id, previous, saga_id):
                    continue  # a concurrent cancel started one: join it
            data = {
                "order_id": order_id,
                "order_saga_id": order.saga_id,
                "reason": reason,
                "lines": [[line.product_id, line.quantity] for line in order.lines],
            }
            await self._run(CANCEL, saga_id, data)
            return await self.get(order_id)
        raise Aborted("the order kept changing while cancelling; retry", reason="CONFLICT")

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self, grace_s: float) -> None:
        """Let sagas started by callers finish within `grace_s` (the runner releases the rest)."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
