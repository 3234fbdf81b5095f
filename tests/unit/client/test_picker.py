"""Pickers: round-robin order, power-of-two-choices preference, empty sets."""

from __future__ import annotations

import collections
import itertools
import random
from dataclasses import dataclass
from typing import Any

import pytest

from mesh.balancer.picker import P2CPicker, RoundRobinPicker, make_picker


@dataclass(eq=False)
class Fake:
    name: str
    inflight: int = 0


def test_round_robin_visits_each_in_turn() -> None:
    eps = [Fake("a"), Fake("b"), Fake("c")]
    p: RoundRobinPicker[Fake] = RoundRobinPicker(random.Random(1))
    p.update(eps)
    picks = [p.pick() for _ in range(9)]
    assert collections.Counter(e.name for e in picks if e) == {"a": 3, "b": 3, "c": 3}
    # consecutive picks never repeat while there are several candidates
    assert all(x is not y for x, y in itertools.pairwise(picks))


def test_round_robin_survives_shrinking_candidates() -> None:
    p: RoundRobinPicker[Fake] = RoundRobinPicker(random.Random(2))
    p.update([Fake("a"), Fake("b"), Fake("c")])
    p.pick()
    only = Fake("z")
    p.update([only])
    assert p.pick() is only


@pytest.mark.parametrize("policy", ["round_robin", "p2c"])
def test_no_candidates_gives_none(policy: str) -> None:
    p: Any = make_picker(policy)
    assert p.pick() is None
    p.update([Fake("a")])
    assert p.pick() is not None
    p.update([])
    assert p.pick() is None


def test_p2c_never_picks_the_most_loaded_of_three_distinct_loads() -> None:
    light, medium, heavy = Fake("light", 0), Fake("medium", 5), Fake("heavy", 50)
    p: P2CPicker[Fake] = P2CPicker(random.Random(3))
    p.update([light, medium, heavy])
    counts = collections.Counter(p.pick().name for _ in range(3000))  # type: ignore[union-attr]
    assert counts["heavy"] == 0
    # light wins both pairs it is drawn in (2 of the 3 pairs), medium one.
    assert 1800 < counts["light"] < 2200
    assert 800 < counts["medium"] < 1200


def test_p2c_with_two_always_takes_the_lighter() -> None:
    a, b = Fake("a", 3), Fake("b", 1)
    p: P2CPicker[Fake] = P2CPicker(random.Random(4))
    p.update([a, b])
    assert {p.pick().name for _ in range(100)} == {"b"}  # type: ignore[union-attr]


def test_p2c_spreads_equal_loads_evenly() -> None:
    eps = [Fake(str(i)) for i in range(5)]
    p: P2CPicker[Fake] = P2CPicker(random.Random(5))
    p.update(eps)
    counts = collections.Counter(p.pick().name for _ in range(10_000))  # type: ignore[union-attr]
    assert set(counts) == {e.name for e in eps}
    assert max(counts.values()) - min(counts.values()) < 600


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        make_picker("random")
