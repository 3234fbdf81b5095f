"""Exponential backoff with "equal jitter": the one formula of every pause between attempts.

`backoff_delay(n, initial_s, max_s, factor, rng)` is the pause after the n-th
failure (n = 0 for the first pause): a random value in [cap/2, cap] where
cap = min(max_s, initial_s * factor**n). Half the cap is fixed (a pause is
never ~0, so a tight loop cannot hammer a dead dependency) and half random (so
clients that failed together do not retry in waves). Users: the retry
interceptor (`RetryPolicy.backoff_s`, which scales the cap for
RESOURCE_EXHAUSTED), saga steps (`StepRetry.delay`), and through the stateful
`Backoff` the event relay and consumers, the registry backends, the client
pool's registry watch and the server's background registration.

A module of its own: importing it pulls in neither gRPC, NATS nor a database.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Past this many doublings the cap is max_s anyway; a float power of a long
# outage's attempt count would overflow.
_MAX_EXPONENT = 60


def backoff_cap(failures: int, initial_s: float, max_s: float, factor: float = 2.0) -> float:
    """The upper bound of the pause after `failures` + 1 failures (0: the first pause)."""
    return min(max_s, initial_s * factor ** min(max(failures, 0), _MAX_EXPONENT))


def jittered(cap: float, rng: random.Random) -> float:
    """A pause in [cap/2, cap] ("equal jitter")."""
    return cap / 2 + rng.random() * cap / 2


def backoff_delay(
    failures: int, initial_s: float, max_s: float, factor: float, rng: random.Random
) -> float:
    """The jittered pause after `failures` + 1 failures (see the module docstring)."""
    return jittered(backoff_cap(failures, initial_s, max_s, factor), rng)


@dataclass(slots=True)
class Backoff:
    """The same formula with the attempt count kept: `next()` after a failure, `reset()`
    after a success."""

    initial_s: float = 0.05
    max_s: float = 2.0
    factor: float = 2.0
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def next(self) -> float:
        """The next delay: random in [cap/2, cap] with cap growing per attempt (never 0)."""
        delay = backoff_delay(self.attempt, self.initial_s, self.max_s, self.factor, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
