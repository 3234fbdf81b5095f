"""Pickers: choose one endpoint per call among the current candidates.

The pool swaps in a new candidate tuple whenever the set changes (registry,
connectivity, ejection); a pick only reads it, so picking costs a few
hundred nanoseconds and allocates nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class Loaded(Protocol):
    """What power-of-two-choices needs to know about an endpoint."""

    inflight: int


E = TypeVar("E", bound=Loaded)


class Picker(Protocol[E]):
    """Chooses among the candidates; None when there are none."""

    def update(self, candidates: Sequence[E]) -> None: ...

    def pick(self) -> E | None: ...


class RoundRobinPicker(Generic[E]):
    """Each candidate in turn, starting at a random one so clients do not move in step."""

    __slots__ = ("_candidates", "_n", "_next")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._candidates: tuple[E, ...] = ()
        self._n = 0
        self._next = (rng or random).randrange(1 << 30)

    def update(self, candidates: Sequence[E]) -> None:
        self._candidates = tuple(candidates)
        self._n = len(self._candidates)

    def pick(self) -> E | None:
        n = self._n
        if n == 0:
            return None
        i = self._next % n
        self._next = i + 1
        return self._candidates[i]


class P2CPicker(Generic[E]):
    """Power of two choices: two distinct random candidates, the one with fewer calls in flight.

    Ties go to the first draw, which is itself random, so equal loads still spread.
    """

    __slots__ = ("_candidates", "_n", "_random")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._candidates: tuple[E, ...] = ()
        self._n = 0
        self._random = (rng or random.Random()).random

    def update(self, candidates: Sequence[E]) -> None:
        self._candidates = tuple(candidates)
        self._n = len(self._candidates)

    def pick(self) -> E | None:
        n = self._n
        if n <= 1:
            return self._candidates[0] if n else None
        c = self._candidates
        r = self._random() * n
        i = int(r)
        # A second index drawn from the other n-1 slots, from the same random
        # number's fraction: one call to random() per pick.
        j = int((r - i) * (n - 1))
        if j >= i:
            j += 1
        a, b = c[i], c[j]
        return b if b.inflight < a.inflight else a


def make_picker(policy: str, rng: random.Random | None = None) -> Picker[E]:
    """The picker for a `MESH_LB_POLICY` value (round_robin | p2c)."""
    if policy == "round_robin":
        return RoundRobinPicker(rng)
    if policy == "p2c":
        return P2CPicker(rng)
    raise ValueError(f"unknown load-balancing policy {policy!r} (round_robin | p2c)")
