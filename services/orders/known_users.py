"""Users that users confirmed exist, remembered by this orders process.

The order saga's first step used to ask users (`GetUser`) on every order: one
mesh call, ~8 % of an order's CPU across the shop and a sequential hop of its
latency, to learn what rarely changes. A user id users confirmed is remembered
here, and the user's later orders in this process skip the call.

What still refuses a deleted user: users publishes `user.deleted`; orders
records the id in `deleted_users` in the handler's transaction (the one that
flags the user's orders in flight), and the saga's `create_order` step reads that
record in the transaction that inserts the order. So the memory here is only a
"users said yes once" and never outvotes a deletion: ids are never reused.

Limits:
- A deletion takes effect for orders when its event is handled (milliseconds when
  NATS is up; after an outage, once the consumer catches up). An order that gets
  past `create_order` before that is flagged by the same handler and compensated,
  as one in flight before; one whose stock was already confirmed stands, as before.
  Asking users on every order had the same window between its answer and
  `create_order`, only shorter.
- Overlapping transactions cannot both miss each other: SQLite's writers take
  turns; on PostgreSQL (read committed) both take a per-user advisory lock, shared
  by orders being created and exclusive for the deletion, so whichever runs second
  sees the first's record or order (`OrdersStore.user_deleted`).
- Bounded: past `capacity` ids the oldest is forgotten (and asked for again).
"""

from __future__ import annotations

DEFAULT_CAPACITY = 100_000  # ~10 MB of 36-character ids at most


class KnownUsers:
    """A bounded set of user ids, oldest forgotten first."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._ids: dict[str, None] = {}

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, user_id: str) -> None:
        if user_id in self._ids:
            return
        if len(self._ids) >= self._capacity:
            del self._ids[next(iter(self._ids))]
        self._ids[user_id] = None
