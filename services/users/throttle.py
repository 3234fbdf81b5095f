"""Per-account throttling of failed logins, checked before any password hashing.

After `max_failures` failed logins for one email within `window_s` (a sliding
window), further logins for that email answer RESOURCE_EXHAUSTED with a
RetryInfo (when the oldest counted failure leaves the window) without
touching argon2, even with the right password. Refused attempts are not
counted, so the back-off ends on time. A success clears the email's failures.

Keyed by the email as typed (normalised), whether an account exists or not:
an unknown email is throttled exactly like a known one (no enumeration), and
spraying one email cannot hold the argon2 slots. Logins in flight count too
(in this process): a burst of parallel attempts for one email gets at most
`max_failures - failures` of them into hashing; the rest are refused at once.

Failures live in the database, so instances share them. Limits: anyone can
lock an account for the window by failing its logins (the price of per-account
throttling; the edge's per-client rate limit slows that down); the in-flight
count is per process.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from base.errors import ResourceExhausted
from services.common.timestamps import utcnow
from services.users.store import UsersStore

IN_FLIGHT_RETRY_S = 1.0


class LoginThrottle:
    def __init__(
        self,
        store: UsersStore,
        *,
        max_failures: int,
        window_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._max = max_failures
        self._window = timedelta(seconds=window_s)
        self._clock = clock
        self._in_flight: dict[str, int] = {}

    @asynccontextmanager
    async def attempt(self, email: str) -> AsyncIterator[Attempt]:
        """Admit one login attempt for `email` or raise RESOURCE_EXHAUSTED; the attempt
        reports how it ended (`failed()` / `succeeded()`)."""
        # Counted in flight before the read: attempts racing this one see it, and an
        # attempt ending meanwhile is counted twice at worst (refusing early, never late).
        others = self._in_flight.get(email, 0)
        self._in_flight[email] = others + 1
        try:
            now = self._clock()
            failures = await self._store.recent_failures(email, since=now - self._window)
            if len(failures) >= self._max:
                # The failure whose leaving the window brings the count under the limit.
                frees_at = failures[len(failures) - self._max] + self._window
                self._refuse(max(0.0, (frees_at - now).total_seconds()))
            if len(failures) + others >= self._max:
                self._refuse(IN_FLIGHT_RETRY_S)
            yield Attempt(self, email, bool(failures))
        finally:
            left = self._in_flight[email] - 1
            if left:
                self._in_flight[email] = left
            else:
                del self._in_flight[email]

    async def _failed(self, email: str) -> None:
        now = self._clock()
        await self._store.add_failure(email, now, forget_before=now - self._window)

    def _refuse(self, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        raise ResourceExhausted(
            f"too many failed logins for this account; retry in {seconds} s",
            reason="LOGIN_THROTTLED",
            metadata={"retry_after_s": str(seconds)},
            retry_after_s=float(seconds),
        )


class Attempt:
    """One admitted login attempt."""

    def __init__(self, throttle: LoginThrottle, email: str, had_failures: bool) -> None:
        self._throttle = throttle
        self._email = email
        self._had_failures = had_failures

    async def failed(self) -> None:
        await self._throttle._failed(self._email)

    async def succeeded(self) -> None:
        """Forget the email's failures (no write when there were none: the common case)."""
        if self._had_failures:
            await self._throttle._store.clear_failures(self._email)
