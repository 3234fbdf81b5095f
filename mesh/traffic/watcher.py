"""One watch per service and process, shared by every consumer of its traffic policy.

A process's client pools (weights, header override) and its server (fault
injection) all follow the same policies; `PolicyWatcher.subscribe(service, cb)`
starts the service's watch on first use and calls `cb(policy or None)` at once
with the current policy (when already known) and on every change. The store's
watch yields within its poll or blocking-query latency (file: 0.2 s; Consul: as
soon as the KV index moves), so a change applies within about a second without
a restart.

A watch that fails (store unreachable, an ACL refusal) keeps the last policy and
retries with backoff; a malformed stored policy is skipped by the store (the last
good one stays). A callback that raises is logged and does not stop the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from base.backoff import Backoff
from mesh.traffic.policy import PolicyStore, TrafficPolicy

log = logging.getLogger(__name__)

Listener = Callable[[TrafficPolicy | None], None]
_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 5.0


class PolicyWatcher:
    """Shared watches of traffic policies over one store (None: no policies anywhere)."""

    def __init__(self, store: PolicyStore | None) -> None:
        self.store = store
        self._listeners: dict[str, list[Listener]] = {}
        self._current: dict[str, TrafficPolicy | None] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def current(self, service: str) -> TrafficPolicy | None:
        """The last policy seen for `service` (None: none, or not watched yet)."""
        return self._current.get(service)

    def subscribe(self, service: str, listener: Listener) -> Callable[[], None]:
        """Call `listener` with `service`'s policy now (if known) and on every change;
        returns the function that unsubscribes. Needs a running loop."""
        if self.store is None or self._closed:
            return lambda: None
        self._listeners.setdefault(service, []).append(listener)
        if service in self._current:
            listener(self._current[service])
        if service not in self._tasks:
            self._tasks[service] = asyncio.get_running_loop().create_task(
                self._watch(service), name=f"mesh-traffic-watch-{service}"
            )

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError, KeyError):
                self._listeners[service].remove(listener)

        return unsubscribe

    async def _watch(self, service: str) -> None:
        assert self.store is not None
        backoff = Backoff(_RETRY_INITIAL_S, _RETRY_MAX_S)
        failing = False
        while not self._closed:
            try:
                async for policy in self.store.watch(service):
                    backoff.reset()
                    if failing:
                        failing = False
                        log.info("traffic policy store reachable again for %s", service)
                    self._publish(service, policy)
                return  # the store was closed
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    failing = True
                    log.warning(
                        "cannot watch the traffic policy of %s (%s); keeping the last one",
                        service,
                        exc,
                    )
            await asyncio.sleep(backoff.next())  # backoff, not synchronisation

    def _publish(self, service: str, policy: TrafficPolicy | None) -> None:
        known = service in self._current
        previous = self._current.get(service)
        self._current[service] = policy
        if known and previous == policy:
            return
        if policy is not None or known:
            log.info(
                "traffic policy of %s: %s",
                service,
                policy.to_json() if policy is not None else "none (one pool)",
            )
        for listener in list(self._listeners.get(service, ())):
            try:
                listener(policy)
            except Exception:
                log.exception("applying the traffic policy of %s failed", service)

    async def close(self) -> None:
        """Stop every watch (and close the store)."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.store is not None:
            await self.store.close()
