"""Following a Consul agent with blocking queries: the one loop behind every Consul watch.

Why a module of its own: the registry (`GET /v1/health/service/<name>?passing`) and
the traffic-policy store (`GET /v1/kv/<key>`) follow the agent the same way, and
Consul's rules for it are easy to get subtly wrong in one copy:

* **Index and wait**: the first query (index 0) answers at once; each next one
  sends the last `X-Consul-Index` with `wait`, so the agent holds it until
  something changes or `wait` passes. An index is never below 1; an index that
  goes backwards (agent or cluster rebuilt) means start over from 0.
* **Timeout**: a held query may take `wait` plus up to wait/16 of Consul's
  jitter, on top of the ordinary request timeout.
* **Rate**: at most `queries_per_s` queries a second on average (bursts pass), as
  Consul's blocking-query docs recommend, so an index that moves on every answer
  (or an agent that answers at once) cannot turn a watch into a busy loop.
* **Outages**: a failed query is logged through `Availability` (once when the agent
  becomes unreachable, once when it is back), retried after a jittered backoff,
  and asked again without blocking (index 0), so a recovery shows at once instead
  of after a full `wait` on the old index.

Limits: the loop knows nothing of what it queries. The caller's `query(index)` makes
the HTTP call (with `params(index)` and `timeout_s(index)`) and turns agent failures
into `RegistryUnavailable`, the only error retried here: anything else (an ACL
refusal, a bug) ends the watch by raising. Every answer is yielded, changed or not
(a held query also returns when `wait` passes), so the caller compares with what it
last passed on. The rate limit is per watch, not per agent; `Closer` ends the loop
(and cancels a held query) as soon as its owner closes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiolimiter import AsyncLimiter

from base.backoff import Backoff
from mesh.discovery.lifecycle import Availability, Closed, Closer
from mesh.discovery.registry import RegistryUnavailable

T = TypeVar("T")


def go_duration(seconds: float) -> str:
    """A Go duration string as Consul parses it ("1s", "250ms")."""
    if seconds <= 0:
        raise ValueError("durations must be positive")
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True, slots=True)
class BlockingQueries:
    """How one client follows the agent (its owner's settings; no defaults of its own)."""

    wait_s: float
    request_timeout_s: float
    retry_initial_s: float
    retry_max_s: float
    queries_per_s: float

    def params(self, index: int) -> dict[str, Any]:
        """py-consul's `index` and `wait`: held from index 1 on, answered at once at 0."""
        if index > 0:
            return {"index": index, "wait": go_duration(self.wait_s)}
        return {"index": None, "wait": None}

    def timeout_s(self, index: int) -> float:
        """The client-side timeout of one query (a held one gets `wait` + Consul's jitter)."""
        return self.request_timeout_s + (self.wait_s * 17 / 16 if index > 0 else 0)

    async def follow(
        self,
        query: Callable[[int], Awaitable[tuple[int, T]]],
        closer: Closer,
        reads: Availability,
    ) -> AsyncGenerator[T, None]:
        """Each answer of `query(index)` -> (X-Consul-Index, value), until `closer` closes."""
        index = 0
        backoff = Backoff(self.retry_initial_s, self.retry_max_s)
        limiter = AsyncLimiter(self.queries_per_s, 1.0)
        while not closer.closed:
            try:
                await closer.run(limiter.acquire())
                new_index, value = await closer.run(query(index))
            except Closed:
                return
            except RegistryUnavailable as exc:
                reads.failed(exc)
                index = 0  # ask without blocking: a recovery shows at once
                try:
                    await closer.sleep(backoff.next())
                except Closed:
                    return
                continue
            reads.ok()
            backoff.reset()
            index = 0 if new_index < index else max(new_index, 1)  # backwards: start over
            yield value
