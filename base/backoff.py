"""Exponential backoff with jitter, shared by the event relay and consumers and by the
registry backends (a module of its own: importing it pulls in neither NATS nor a database)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    initial_s: float = 0.05
    max_s: float = 2.0
    factor: float = 2.0
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def next(self) -> float:
        """The next delay: random in [cap/2, cap] with cap growing per attempt (never 0)."""
        # Exponent capped: past a few dozen attempts the cap is max_s anyway, and a
        # float power of a long outage's attempt count would overflow.
        cap = min(self.max_s, self.initial_s * self.factor ** min(self.attempt, 60))
        self.attempt += 1
        return cap / 2 + self._rng.random() * cap / 2

    def reset(self) -> None:
        self.attempt = 0
