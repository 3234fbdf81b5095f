"""Weighted subsets: choose a subset (track) by the traffic policy's weights, then an
instance inside it with the subset's own picker (round-robin or p2c).

The pool (pool.py) rebuilds the table whenever candidates or the policy change;
a pick is one random draw, a scan of a tuple with one entry per subset (two in
a blue/green release), and the subset picker's own pick.

Fallback (documented in the README's "Traffic policy"): only subsets with a
positive weight and at least one usable instance (connected or connecting, not
ejected) enter the table, and the draw is over their weights alone, so a subset
whose instances are all ejected or gone hands its share to the others in
proportion to their weights. When no weighted subset is usable, the pool's
whole candidate list (every track, ejected ones in panic) takes the call, as
without a policy: a broken release degrades to "whatever is alive" rather than
to failing every call.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, TypeVar

from mesh.balancer.picker import Loaded, Picker

E = TypeVar("E", bound=Loaded)


class SubsetPicker(Generic[E]):
    """Picks a subset by weight, then an endpoint with that subset's picker."""

    __slots__ = ("_fallback", "_random", "_table", "_total")

    def __init__(self, fallback: Picker[E], rng: random.Random | None = None) -> None:
        self._fallback = fallback
        self._random = (rng or random.Random()).random
        self._table: tuple[tuple[float, Picker[E]], ...] = ()
        self._total = 0.0

    def update(self, subsets: Sequence[tuple[int, Picker[E]]]) -> None:
        """The usable subsets: (weight > 0, the subset's picker), in the policy's order."""
        table: list[tuple[float, Picker[E]]] = []
        total = 0.0
        for weight, picker in subsets:
            if weight > 0:
                total += weight
                table.append((total, picker))
        self._table = tuple(table)
        self._total = total

    @property
    def shares(self) -> tuple[float, ...]:
        """Each usable subset's share of the picks (for status and tests)."""
        previous = 0.0
        out = []
        for limit, _ in self._table:
            out.append((limit - previous) / self._total)
            previous = limit
        return tuple(out)

    def pick(self) -> E | None:
        table = self._table
        if not table:
            return self._fallback.pick()
        r = self._random() * self._total
        for limit, picker in table:
            if r < limit:
                return picker.pick()
        return table[-1][1].pick()  # r == total only by rounding
